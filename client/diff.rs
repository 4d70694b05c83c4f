//! Stage 7, diff: what one module's upper layer changes, walking only that
//! layer (never the whole filesystem) — DESIGN §3.7.
//!
//! Owns the classification of upper-layer entries: a whiteout is a
//! deletion, an opaque directory over an existing one a replacement, an
//! entry with nothing below it a creation, anything else a modification —
//! unless content, type, mode, owner and extended attributes all equal the
//! layer below (a copy-up that changed nothing is not a change). "Below"
//! is the same path in the earlier modules' layers, then in ROOT; the shim
//! layer is never a baseline. Produces [`Change`] records with md5, labels
//! and a unified diff (similar) for text, streamed one at a time in path
//! order ([`Differ::each`], DESIGN §6): a walk holds one directory's names
//! per level, never the layer's changes.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fsutil::kind_name;
use crate::fsutil::{is_opaque, is_whiteout, md5_file, same_bytes, xattrs};
use crate::report::{Change, ChangeKind, Meta};
use crate::run::{Mount, RunDir};

/// File `rel` of ROOT (`etc/passwd`, `etc/group`) read as untrusted
/// ([`crate::fsutil::read_in_root`], capped at
/// [`crate::exec::MAX_ACCOUNTS_FILE`]); empty when it cannot be, so
/// owners show as numbers.
fn in_root(root: &Path, rel: &str) -> String {
    crate::fsutil::read_in_root(root, Path::new(rel), rel, crate::exec::MAX_ACCOUNTS_FILE)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Files larger than this are compared but not shown as a text diff.
const MAX_DIFF_BYTES: u64 = 1 << 20;

/// User and group names of the target system (ROOT's passwd and group).
#[derive(Debug, Default)]
pub struct Owners {
    users: BTreeMap<u32, String>,
    groups: BTreeMap<u32, String>,
}

impl Owners {
    pub fn load(root: &Path) -> Owners {
        Self::from_files(|f| in_root(root, f))
    }

    /// The names as the root stands after layer `layer` (1-based): each of
    /// `etc/passwd` and `etc/group` from the topmost layer that changed
    /// it, else from ROOT — so a user a module created shows by name.
    /// `lowers`: the layers below it as mounted (its requires closure,
    /// ascending, or a squash of its first ones and the rest).
    pub fn at_layer(run: &RunDir, root: &Path, layer: usize, lowers: &Lowers) -> Owners {
        Self::from_files(|f| {
            std::iter::once(run.upper(layer, 0))
                .chain(lowers.dirs(run, 0))
                .map(|d| d.join(f))
                .find(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
                .and_then(|p| {
                    crate::fsutil::read_small(&p, f, crate::exec::MAX_ACCOUNTS_FILE)
                        .ok()
                        .flatten()
                })
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|| in_root(root, f))
        })
    }

    fn from_files(text_of: impl Fn(&str) -> String) -> Owners {
        let read = |f: &str| -> BTreeMap<u32, String> {
            text_of(f)
                .lines()
                .filter_map(|l| {
                    let mut it = l.split(':');
                    let name = it.next()?;
                    let id = it.nth(1)?.parse().ok()?;
                    Some((id, name.to_string()))
                })
                .collect()
        };
        Owners {
            users: read("etc/passwd"),
            groups: read("etc/group"),
        }
    }

    fn owner(&self, uid: u32, gid: u32) -> String {
        let u = self
            .users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string());
        let g = self
            .groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string());
        format!("{u}:{g}")
    }
}

/// The layers below a module's own, as its overlay stacks them: the
/// squashes of its first requirements (if any, [`crate::sandbox::squash`])
/// and the rest of its requires closure, ascending. A path is looked up
/// in fewer than 8 squashes of each of [`crate::sandbox::SQUASH_SIZES`]
/// and 8 layers (more squashes of the largest size only past 4,096
/// requirements).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lowers {
    /// Squashes `q/J-K` holding the first layers of the closure folded,
    /// topmost first.
    pub squashes: Vec<usize>,
    /// The other layers (1-based), ascending.
    pub stacked: Vec<usize>,
}

impl Lowers {
    /// The directories of mount `k`, the topmost first (ROOT not included).
    pub fn dirs<'a>(&'a self, run: &'a RunDir, k: usize) -> impl Iterator<Item = PathBuf> + 'a {
        let layers = run.layers();
        self.stacked
            .iter()
            .rev()
            .map(move |&j| RunDir::upper_rel(j, k))
            .chain(self.squashes.iter().map(move |&j| RunDir::squash_rel(j, k)))
            .map(move |rel| layers.join(rel))
    }
}

/// Where one layer's changes are computed against.
pub struct Differ<'a> {
    pub run: &'a RunDir,
    pub root: &'a Path,
    pub mounts: &'a [Mount],
    pub owners: &'a Owners,
    /// The layers below the one diffed, as its overlay stacked them.
    pub lowers: &'a Lowers,
    /// Remove from the upper what it holds without a change (a file
    /// copied up and left as it was, a whiteout over nothing), as the
    /// walk meets it: the merge then applies exactly the changes shown.
    /// A module beside this one, which did not see this layer, may have
    /// changed the same file's attributes or content below it.
    pub prune: bool,
    /// Paths a later module overrides ([`crate::graph::Overrides`]): not
    /// a change of this layer (and kept in it: its requirers see them).
    pub hidden: Option<&'a std::collections::HashSet<String>>,
    /// Paths this layer installs over a module of its closure: diffed
    /// against ROOT, not the overridden version below, and never pruned
    /// (the version below is not what a requirer must see).
    pub from_root: Option<&'a std::collections::HashSet<String>>,
}

/// What a layer holds at a path.
enum Found {
    At(PathBuf),
    /// Deleted in this layer (whiteout) or hidden by an opaque/non-dir parent.
    Gone,
    Absent,
}

impl Differ<'_> {
    /// The changes made by layer `layer` (1-based), sorted by path.
    pub fn layer(&self, layer: usize) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        self.each(layer, None, &mut |c| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams the changes made by layer `layer` (1-based) into `sink`,
    /// in the order [`Differ::layer`] sorts them (by shown path), holding
    /// none of them: the walk keeps one directory's names per level.
    /// `under`: only the changes whose path starts with it (`/etc/`);
    /// the rest of the layer is not walked.
    pub fn each(
        &self,
        layer: usize,
        under: Option<&str>,
        sink: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<()> {
        let mut walks: Vec<Walk<'_, '_>> = (0..self.mounts.len())
            .map(|k| (k, self.run.upper(layer, k)))
            .filter(|(_, upper)| upper.is_dir())
            .map(|(k, upper)| Walk {
                differ: self,
                layer,
                k,
                upper,
                under,
                start: true,
                stack: Vec::new(),
            })
            .collect();
        // The mounts' walks, each in path order, merged (ties: the lower
        // mount index first, as a stable sort of their concatenation).
        let mut heads: Vec<Option<Change>> = Vec::with_capacity(walks.len());
        for w in &mut walks {
            heads.push(w.next().transpose()?);
        }
        loop {
            let mut best: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                let Some(c) = h else { continue };
                if best.is_none_or(|b| c.path < heads[b].as_ref().expect("a head").path) {
                    best = Some(i);
                }
            }
            let Some(i) = best else { return Ok(()) };
            let next = walks[i].next().transpose()?;
            let mut c = std::mem::replace(&mut heads[i], next).expect("a head");
            scrub_secret(&mut c);
            sink(c)?;
        }
    }

    fn abs(&self, k: usize, rel: &Path) -> String {
        let p = Path::new("/").join(&self.mounts[k].rel).join(rel);
        let s = crate::fsutil::shown(&p);
        if s.len() > 1 {
            s.trim_end_matches('/').to_string()
        } else {
            s
        }
    }

    /// Classifies `upper/rel`: its change, if any, and — for a directory,
    /// whose entries are walked next — whether what is below no longer
    /// counts for them. `no_lower`: an ancestor replaced what was below,
    /// so nothing below counts.
    fn classify(
        &self,
        layer: usize,
        k: usize,
        upper: &Path,
        rel: &Path,
        no_lower: bool,
    ) -> Result<(Option<Change>, Option<bool>)> {
        let path = upper.join(rel);
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let abs = self.abs(k, rel);
        let listed = |set: Option<&std::collections::HashSet<String>>| {
            !meta.is_dir() && set.is_some_and(|s| s.contains(&abs))
        };
        if listed(self.hidden) {
            return Ok((None, None));
        }
        let from_root = listed(self.from_root);
        let lower = if no_lower {
            None
        } else if from_root {
            root_lookup(&self.root.join(&self.mounts[k].rel), rel)
        } else {
            self.lower(layer, k, rel)
        };

        if is_whiteout(&meta) {
            let Some(l) = lower else {
                self.pruned(&path)?;
                return Ok((None, None));
            };
            let old = self.meta(&l)?;
            let lm = fs::symlink_metadata(&l)?;
            let diff = if lm.is_file() {
                text_diff(Some(&l), None, &abs)?
            } else {
                None
            };
            let change = Change {
                path: abs.clone(),
                kind: ChangeKind::Deleted,
                old: Some(old),
                new: None,
                diff,
                inside: inside(&l, &abs)?,
            };
            return Ok((Some(change), None));
        }
        let new = self.meta(&path)?;
        let mut children_without_lower = no_lower;
        let change = match &lower {
            None => {
                let diff = if meta.is_file() {
                    text_diff(None, Some(&path), &abs)?
                } else {
                    None
                };
                children_without_lower = true;
                Some(Change {
                    path: abs,
                    kind: ChangeKind::Created,
                    old: None,
                    new: Some(new),
                    diff,
                    inside: None,
                })
            }
            Some(l) => {
                let (change, replaced) = self.against_lower(&path, &meta, l, abs, new)?;
                children_without_lower |= replaced;
                if change.is_none() && !meta.is_dir() && !from_root {
                    self.pruned(&path)?;
                }
                change
            }
        };
        Ok((change, meta.is_dir().then_some(children_without_lower)))
    }

    /// Classifies upper entry `path` (`meta`, shown as `abs`, `new` its
    /// attributes) against the lower entry `l`: Replaced, Modified, or no
    /// change (a copy-up that changed nothing). True when what was below
    /// no longer counts for the entries under it (a replaced directory).
    fn against_lower(
        &self,
        path: &Path,
        meta: &fs::Metadata,
        l: &Path,
        abs: String,
        new: Meta,
    ) -> Result<(Option<Change>, bool)> {
        let lmeta = fs::symlink_metadata(l)?;
        let opaque = meta.is_dir() && is_opaque(path);
        if meta.is_dir() && (opaque || !lmeta.is_dir()) {
            let change = Change {
                inside: inside(l, &abs)?,
                path: abs,
                kind: ChangeKind::Replaced,
                old: Some(self.meta(l)?),
                new: Some(new),
                diff: None,
            };
            return Ok((Some(change), true));
        }
        if !meta.is_dir() && lmeta.is_dir() {
            let diff = if meta.is_file() {
                text_diff(None, Some(path), &abs)?
            } else {
                None
            };
            let change = Change {
                inside: inside(l, &abs)?,
                path: abs,
                kind: ChangeKind::Replaced,
                old: Some(self.meta(l)?),
                new: Some(new),
                diff,
            };
            return Ok((Some(change), false));
        }
        let old = self.meta(l)?;
        let same_content = match (meta.is_file(), lmeta.is_file()) {
            (true, true) => same_bytes(path, l, meta.len(), lmeta.len())?,
            _ => true, // type and link target are part of Meta
        };
        if same_content && old == new && xattrs(path) == xattrs(l) {
            return Ok((None, false));
        }
        let diff = if !same_content {
            text_diff(Some(l), Some(path), &abs)?
        } else {
            None
        };
        let change = Change {
            path: abs,
            kind: ChangeKind::Modified,
            old: Some(old),
            new: Some(new),
            diff,
            inside: None,
        };
        Ok((Some(change), false))
    }

    /// With [`Differ::prune`]: removes `path`, an upper entry that is no change.
    fn pruned(&self, path: &Path) -> Result<()> {
        if self.prune {
            fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }

    /// The entry below layer `layer` at `rel` of mount `k`: the nearest
    /// layer of its closure that has or hides it, else ROOT.
    fn lower(&self, _layer: usize, k: usize, rel: &Path) -> Option<PathBuf> {
        for dir in self.lowers.dirs(self.run, k) {
            match layer_lookup(&dir, rel) {
                Found::At(p) => return Some(p),
                Found::Gone => return None,
                Found::Absent => continue,
            }
        }
        root_lookup(&self.root.join(&self.mounts[k].rel), rel)
    }

    fn meta(&self, path: &Path) -> Result<Meta> {
        let m = fs::symlink_metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let md5 = if m.is_file() {
            Some(md5_file(path)?)
        } else {
            None
        };
        let target = if m.file_type().is_symlink() {
            Some(crate::fsutil::shown(&fs::read_link(path)?))
        } else {
            None
        };
        let selinux = xattr::get(path, "security.selinux")
            .ok()
            .flatten()
            .map(|v| {
                String::from_utf8_lossy(&v)
                    .trim_end_matches('\0')
                    .to_string()
            });
        Ok(Meta {
            kind: kind_name(&m).to_string(),
            mode: if m.file_type().is_symlink() {
                0o777
            } else {
                m.mode() & 0o7777
            },
            uid: m.uid(),
            gid: m.gid(),
            owner: self.owners.owner(m.uid(), m.gid()),
            md5,
            target,
            selinux,
            caps: crate::fsutil::file_caps(path),
            size: if m.is_file() { m.len() } else { 0 },
        })
    }
}

/// One mount's part of a layer, walked in the order of its changes'
/// shown paths. A directory's entries are sorted by their shown name,
/// and the entries below a directory `d` come where `d/` sorts among its
/// siblings (after `d.conf`, whose `.` sorts before `/`), so the changes
/// come out as a sort of the whole list would put them.
struct Walk<'a, 'd> {
    differ: &'a Differ<'d>,
    layer: usize,
    k: usize,
    upper: PathBuf,
    /// Only paths starting with this (see [`Differ::each`]).
    under: Option<&'a str>,
    /// The layer's own top (`rel` empty) is still to classify.
    start: bool,
    /// The directories being walked, outermost first.
    stack: Vec<Frame>,
}

/// A directory being walked: its entries and their subtrees, in order.
struct Frame {
    rel: PathBuf,
    /// Its path as shown (`/etc`; empty for `/`).
    shown: String,
    /// What its entries are classified with (see [`Differ::classify`]).
    no_lower: bool,
    events: Vec<Event>,
    next: usize,
}

struct Event {
    /// The shown name, with `/` after it for the entries below it (a
    /// name has no `/`, so no other key starts with that).
    key: String,
    name: std::ffi::OsString,
    /// The entries below a directory; `Some(no_lower)` once the
    /// directory itself was classified (and is one).
    below: Option<Option<bool>>,
}

impl Walk<'_, '_> {
    /// Whether a path (`…/` for what is below a directory) can hold a
    /// wanted change.
    fn wanted(&self, path: &str, below: bool) -> bool {
        match self.under {
            None => true,
            Some(u) => path.starts_with(u) || (below && u.starts_with(path)),
        }
    }

    /// Reads directory `rel` (shown as `shown`) into a frame; its entries
    /// are classified with `no_lower`.
    fn frame(&self, rel: PathBuf, shown: String, no_lower: bool) -> Result<Frame> {
        let path = self.upper.join(&rel);
        let mut events = Vec::new();
        let entries =
            fs::read_dir(&path).with_context(|| format!("cannot read {}", path.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("cannot read {}", path.display()))?;
            let name = e.file_name();
            let key = crate::fsutil::shown(Path::new(&name));
            let is_dir = e
                .file_type()
                .with_context(|| format!("cannot read {}", e.path().display()))?
                .is_dir();
            if is_dir {
                events.push(Event {
                    key: format!("{key}/"),
                    name: name.clone(),
                    below: Some(None),
                });
            }
            events.push(Event {
                key,
                name,
                below: None,
            });
        }
        events.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Frame {
            rel,
            shown,
            no_lower,
            events,
            next: 0,
        })
    }

    /// The next change, or `None` at the end of the walk.
    fn step(&mut self) -> Result<Option<Change>> {
        if self.start {
            self.start = false;
            let (change, below) =
                self.differ
                    .classify(self.layer, self.k, &self.upper, Path::new(""), false)?;
            let top = self.differ.abs(self.k, Path::new(""));
            let top = top.trim_end_matches('/').to_string();
            if let Some(no_lower) = below {
                if self.wanted(&format!("{top}/"), true) {
                    let f = self.frame(PathBuf::new(), top, no_lower)?;
                    self.stack.push(f);
                }
            }
            if let Some(c) = change.filter(|c| self.wanted(&c.path, false)) {
                return Ok(Some(c));
            }
        }
        loop {
            let Some(f) = self.stack.last_mut() else {
                return Ok(None);
            };
            if f.next == f.events.len() {
                self.stack.pop();
                continue;
            }
            let ev = &f.events[f.next];
            f.next += 1;
            let path = format!("{}/{}", f.shown, ev.key);
            let rel = f.rel.join(&ev.name);
            let below_key = format!("{}/", ev.key);
            let (no_lower, below) = (f.no_lower, ev.below);
            match below {
                // A directory's entries (`path` ends with `/`).
                Some(below) => {
                    let Some(no_lower) = below else { continue };
                    if self.wanted(&path, true) {
                        let shown = path.trim_end_matches('/').to_string();
                        let f = self.frame(rel, shown, no_lower)?;
                        self.stack.push(f);
                    }
                }
                None => {
                    let below_at = (self.stack.last().expect("a frame").events)
                        .binary_search_by(|e| e.key.as_str().cmp(&below_key))
                        .ok()
                        .filter(|_| self.wanted(&format!("{path}/"), true));
                    let wanted = self.wanted(&path, false);
                    if !wanted && below_at.is_none() {
                        continue;
                    }
                    let (change, below) =
                        self.differ
                            .classify(self.layer, self.k, &self.upper, &rel, no_lower)?;
                    if let (Some(j), Some(flag)) = (below_at, below) {
                        let f = self.stack.last_mut().expect("a frame");
                        f.events[j].below = Some(Some(flag));
                    }
                    if let Some(c) = change.filter(|_| wanted) {
                        return Ok(Some(c));
                    }
                }
            }
        }
    }
}

impl Iterator for Walk<'_, '_> {
    type Item = Result<Change>;

    fn next(&mut self) -> Option<Result<Change>> {
        match self.step() {
            Ok(c) => c.map(Ok),
            Err(e) => {
                // One error ends the walk.
                self.stack.clear();
                self.start = false;
                Some(Err(e))
            }
        }
    }
}

/// What a deleted or replaced directory `dir` (shown as `abs`) held,
/// symlinks not followed; `None` when it is not a directory.
fn inside(dir: &Path, abs: &str) -> Result<Option<crate::report::Inside>> {
    if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(None);
    }
    let mut found = crate::report::Inside::default();
    let mut stack = vec![(dir.to_path_buf(), abs.to_string(), 0usize)];
    while let Some((d, shown, depth)) = stack.pop() {
        if depth > crate::fsutil::MAX_DEPTH {
            continue;
        }
        let entries = fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?;
        for e in entries.flatten() {
            let p = format!(
                "{shown}/{}",
                crate::fsutil::shown(Path::new(&e.file_name()))
            );
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                found.dirs += 1;
                stack.push((e.path(), p.clone(), depth + 1));
            } else {
                found.files += 1;
            }
            found.paths.push(p);
        }
    }
    found.paths.sort();
    Ok(Some(found))
}

/// A file that is not world-readable (before or after) is a secret: its
/// content, diff and md5 (an md5 of a short password is the password)
/// never leave the node; the change says `content changed`.
fn scrub_secret(c: &mut Change) {
    let secret = |m: &Option<Meta>| {
        m.as_ref()
            .is_some_and(|m| m.kind == "regular file" && m.mode & 0o004 == 0)
    };
    if !(secret(&c.old) || secret(&c.new)) {
        return;
    }
    let changed = match (&c.old, &c.new) {
        (Some(o), Some(n)) => o.md5 != n.md5,
        _ => true,
    };
    for m in [c.old.as_mut(), c.new.as_mut()].into_iter().flatten() {
        m.md5 = None;
    }
    c.diff = changed.then(|| "content changed".to_string());
}

/// Looks `rel` up in one upper layer.
fn layer_lookup(upper: &Path, rel: &Path) -> Found {
    let mut here = upper.to_path_buf();
    let mut opaque_above = false;
    let mut comps = rel.components().peekable();
    while let Some(c) = comps.next() {
        here.push(c);
        let last = comps.peek().is_none();
        match fs::symlink_metadata(&here) {
            Err(_) => {
                return if opaque_above {
                    Found::Gone
                } else {
                    Found::Absent
                }
            }
            Ok(m) if is_whiteout(&m) => return Found::Gone,
            Ok(_) if last => return Found::At(here),
            // A file where a parent directory was hides everything below.
            Ok(m) if !m.is_dir() => return Found::Gone,
            Ok(_) => opaque_above |= is_opaque(&here),
        }
    }
    Found::At(here)
}

/// Looks `rel` up under `base` (ROOT or a mount of it) without following
/// any symlink on the way.
fn root_lookup(base: &Path, rel: &Path) -> Option<PathBuf> {
    let mut here = base.to_path_buf();
    for c in rel.components() {
        if !fs::symlink_metadata(&here).ok()?.is_dir() {
            return None;
        }
        here.push(c);
    }
    fs::symlink_metadata(&here).ok().map(|_| here)
}

/// A unified diff between two regular files (either may be absent), or
/// `binary files differ` / a size note when a text diff makes no sense.
fn text_diff(old: Option<&Path>, new: Option<&Path>, label: &str) -> Result<Option<String>> {
    let read = |p: Option<&Path>| -> Result<Option<Vec<u8>>> {
        match p {
            None => Ok(Some(Vec::new())),
            Some(p) => {
                let m = fs::symlink_metadata(p)?;
                if !m.is_file() {
                    return Ok(None);
                }
                if m.len() > MAX_DIFF_BYTES {
                    return Ok(None);
                }
                // Never followed, never blocking, capped: a layer or ROOT.
                let shown = crate::fsutil::shown(p);
                Ok(crate::fsutil::read_small(p, &shown, MAX_DIFF_BYTES)
                    .ok()
                    .flatten())
            }
        }
    };
    let (Some(a), Some(b)) = (read(old)?, read(new)?) else {
        let big = [old, new].iter().flatten().any(|p| {
            fs::metadata(p)
                .map(|m| m.len() > MAX_DIFF_BYTES)
                .unwrap_or(false)
        });
        return Ok(Some(if big {
            "files too large to show a diff".into()
        } else {
            "binary files differ".into()
        }));
    };
    let text = |v: &[u8]| !v.contains(&0) && std::str::from_utf8(v).is_ok();
    if !text(&a) || !text(&b) {
        return Ok(Some("binary files differ".into()));
    }
    let (a, b) = (
        String::from_utf8(a).expect("checked"),
        String::from_utf8(b).expect("checked"),
    );
    let old_label = if old.is_some() {
        label.to_string()
    } else {
        "/dev/null".into()
    };
    let new_label = if new.is_some() {
        label.to_string()
    } else {
        "/dev/null".into()
    };
    let diff = similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(&old_label, &new_label)
        .to_string();
    Ok(if diff.is_empty() { None } else { Some(diff) })
}
