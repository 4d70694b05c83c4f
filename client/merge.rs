//! Stage 8, merge (DESIGN §3.8): applies the upper layers of a successful
//! live dance onto ROOT, layer by layer in module order, with backups for
//! `disco undo` and a journal that makes a crash harmless.
//!
//! Owns: the apply of each upper entry (whiteout → delete, opaque dir →
//! replace, file/symlink → `rename(2)` into place on the same filesystem,
//! or copy beside the target + fsync + rename across filesystems (a
//! directory's copies made first and fsynced in a batch),
//! directory → create or fix mode/owner/xattrs); the skipping of copy-ups
//! that change nothing; backups in `STATE/backup/RUN/` (hard link or move,
//! copy across filesystems); the undo journal; the `STATE/merging` marker;
//! finishing an interrupted merge; `disco undo`.
//!
//! Crash safety rests on one rule: every applied entry leaves the upper
//! directory once its live directory is synced, so what is left in the
//! upper layers is the remaining work (and at most entries already in
//! place, which a resumed merge finds unchanged).
//! Each journal record is fsynced before its entry is applied, all upper
//! data is made durable (syncfs of the layers) before the first rename,
//! every live file is replaced by a rename, so it is always either old or
//! new, and the live directories changed are fsynced in batches
//! ([`Merger::settle`]; never a syncfs of the root, which would wait for
//! every other writer).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::os::unix::ffi::OsStringExt;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{is_opaque, is_whiteout, same_bytes, xattrs};
use crate::output;
use crate::run::{Layout, RunDir};

/// The marker file that says "merge of RUN in progress".
pub fn marker(state_dir: &Path) -> PathBuf {
    crate::run::merge_marker(state_dir)
}

fn backup_root(state_dir: &Path) -> PathBuf {
    state_dir.join("backup")
}

/// One undo record, written before its entry is applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Undo {
    /// The dance created `path`: undo removes it.
    Remove {
        #[serde(with = "crate::fsutil::path_bytes")]
        path: PathBuf,
    },
    /// The dance replaced or deleted `path`; its old version is backup `seq`.
    Restore {
        #[serde(with = "crate::fsutil::path_bytes")]
        path: PathBuf,
        seq: u64,
    },
    /// The dance changed a directory's attributes: undo sets them back.
    Attrs {
        #[serde(with = "crate::fsutil::path_bytes")]
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
        xattrs: Vec<(String, Vec<u8>)>,
    },
}

/// What a merge did.
#[derive(Debug, Default, Clone)]
pub struct Merged {
    /// Entries that changed the live system.
    pub applied: usize,
    /// Copy-ups that equalled the live entry and were dropped.
    pub unchanged: usize,
}

/// Options from the environment: the crash tests' failpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Failpoint {
    /// `DISCO_FAILPOINT=merge-after:N`: abort() after N applied entries.
    pub abort_after: Option<usize>,
    /// `DISCO_FAILPOINT=undo-after:N`: abort() after N renames or unlinks
    /// of an undo.
    pub undo_abort_after: Option<usize>,
}

impl Failpoint {
    pub fn from_env() -> Result<Failpoint> {
        match std::env::var("DISCO_FAILPOINT") {
            // The deadline's test hook (crate::watchdog::hang_point).
            Ok(v) if v.starts_with("hang:") => Ok(Failpoint::default()),
            Ok(v) if !v.is_empty() => {
                let bad =
                    || format!("DISCO_FAILPOINT={v:?}: expected merge-after:N or undo-after:N");
                let (what, n) = v.split_once(':').with_context(bad)?;
                let n: usize = n.parse().ok().with_context(bad)?;
                match what {
                    "merge-after" => Ok(Failpoint {
                        abort_after: Some(n),
                        ..Failpoint::default()
                    }),
                    "undo-after" => Ok(Failpoint {
                        undo_abort_after: Some(n),
                        ..Failpoint::default()
                    }),
                    _ => bail!(bad()),
                }
            }
            _ => Ok(Failpoint::default()),
        }
    }
}

/// The journal and backup directory of one run, created on first use so
/// a merge that changes nothing leaves no backup behind.
struct Journal {
    dir: PathBuf,
    /// The root the merge writes to; undo refuses to apply it elsewhere.
    root: PathBuf,
    file: Option<fs::File>,
    seq: u64,
    /// Records appended since the last sync.
    dirty: bool,
}

impl Journal {
    fn new(state_dir: &Path, run_id: &str, root: &Path) -> Journal {
        let dir = backup_root(state_dir).join(run_id);
        // A crash can leave a torn last record: cut the journal back to its
        // last complete line before appending.
        if let Ok(text) = fs::read(dir.join("journal")) {
            let keep = text
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0);
            if keep < text.len() {
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("journal"))
                    .and_then(|f| f.set_len(keep as u64));
            }
        }
        let seq = fs::read_to_string(dir.join("journal"))
            .map(|t| t.lines().count() as u64)
            .unwrap_or(0);
        Journal {
            dir,
            root: root.to_path_buf(),
            file: None,
            seq,
            dirty: false,
        }
    }

    /// Appends a record (durable only after [`Journal::sync`]); returns
    /// its sequence number.
    fn append(&mut self, undo: &Undo) -> Result<u64> {
        if self.file.is_none() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.dir.join("b"))
                .with_context(|| format!("cannot create backup dir {}", self.dir.display()))?;
            let path = self.dir.join("journal");
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            fs::write(
                self.dir.join("root"),
                self.root.as_os_str().as_encoded_bytes(),
            )?;
            sync_dir(&self.dir)?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        let mut line = serde_json::to_vec(undo)?;
        line.push(b'\n');
        file.write_all(&line)?;
        self.seq += 1;
        self.dirty = true;
        Ok(self.seq)
    }

    /// Makes every appended record durable (nothing to do when none was
    /// appended since the last sync).
    fn sync(&mut self) -> Result<()> {
        if let (Some(f), true) = (&self.file, self.dirty) {
            f.sync_data().context("cannot sync the undo journal")?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Appends a record and makes it durable at once.
    fn record(&mut self, undo: &Undo) -> Result<u64> {
        let seq = self.append(undo)?;
        self.sync()?;
        Ok(seq)
    }

    fn backup_path(&self, seq: u64) -> PathBuf {
        self.dir.join("b").join(seq.to_string())
    }
}

/// True when the upper layers of `run` hold nothing but directories,
/// symlinks and singly-linked regular files — entries the diff compares
/// completely (content, type, mode, owner, xattrs). When it then reports
/// no change, the merge would apply nothing and can be skipped; a device
/// node, a FIFO, a whiteout or a hard link makes it run.
pub fn diff_covers(run: &RunDir, layout: &Layout) -> bool {
    let mut stack: Vec<PathBuf> = (1..=layout.layers.len())
        .flat_map(|i| (0..layout.mounts.len()).map(move |k| (i, k)))
        .map(|(i, k)| run.upper(i, k))
        .filter(|p| p.is_dir())
        .collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            return false;
        };
        for e in entries {
            let Ok(m) = e.and_then(|e| {
                let p = e.path();
                fs::symlink_metadata(&p).map(|m| (p, m))
            }) else {
                return false;
            };
            let (p, m) = m;
            let ft = m.file_type();
            if ft.is_dir() {
                stack.push(p);
            } else if !(ft.is_symlink() || (ft.is_file() && m.nlink() == 1)) {
                return false;
            }
        }
    }
    true
}

/// Before a merge: takes out of layer `layer` (1-based) of `run` what an
/// override leaves to another layer ([`crate::graph::Overrides`]): every
/// `hidden` path (a later module installs it; never reported here), and
/// every `from_root` path whose version already equals the root's (no
/// change; kept until now for the modules that stacked this layer).
pub fn drop_overridden(
    run: &RunDir,
    layout: &Layout,
    layer: usize,
    hidden: Option<&std::collections::HashSet<String>>,
    from_root: Option<&std::collections::HashSet<String>>,
) -> Result<()> {
    let upper_of = |abs: &str| -> Option<(PathBuf, PathBuf)> {
        let rel = Path::new(abs.trim_start_matches('/'));
        // The deepest mount holding the path.
        let (k, m) = layout
            .mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| rel.starts_with(&m.rel))
            .max_by_key(|(_, m)| m.rel.components().count())?;
        let inner = rel.strip_prefix(&m.rel).ok()?;
        Some((
            run.upper(layer, k).join(inner),
            layout.root.join(&m.rel).join(inner),
        ))
    };
    let remove = |u: &Path| -> Result<()> {
        fs::remove_file(u).with_context(|| format!("cannot remove {}", u.display()))
    };
    for abs in hidden.into_iter().flatten() {
        if let Some((u, _)) = upper_of(abs) {
            if fs::symlink_metadata(&u).is_ok_and(|m| !m.is_dir()) {
                remove(&u)?;
            }
        }
    }
    for abs in from_root.into_iter().flatten() {
        let Some((u, l)) = upper_of(abs) else {
            continue;
        };
        let (Ok(um), Ok(lm)) = (fs::symlink_metadata(&u), fs::symlink_metadata(&l)) else {
            continue;
        };
        if !um.is_dir() && !is_whiteout(&um) && same_entry(&u, &um, &l, &lm)? {
            remove(&u)?;
        }
    }
    Ok(())
}

/// Merges every layer of `run` onto its root. Called for a fresh merge and
/// to finish an interrupted one (the uppers hold exactly the remaining work).
pub fn merge(
    state_dir: &Path,
    run: &RunDir,
    layout: &Layout,
    failpoint: Failpoint,
) -> Result<Merged> {
    let marker = marker(state_dir);
    write_durably(&marker, run.id.as_bytes())?;
    // Everything the sandbox wrote must be on disk before it is renamed
    // into place (the layers may be on their own filesystem: then in the
    // image file too, which that filesystem never flushes itself).
    sync_fs(&run.layers())?;
    crate::sandbox::scratch::sync_image(state_dir, &run.path.join(crate::run::MEM))?;
    let mut journal = Journal::new(state_dir, &run.id, &layout.root);
    let mut m = Merger {
        journal: &mut journal,
        failpoint,
        merged: Merged::default(),
        linked: Default::default(),
        copied: Default::default(),
        dirs: None,
        to_sync: BTreeSet::new(),
        applied_uppers: Vec::new(),
    };
    for (idx, name) in layout.layers.iter().enumerate() {
        m.dirs = changed_dirs(run, idx + 1)?;
        for (k, mount) in layout.mounts.iter().enumerate() {
            let upper = run.upper(idx + 1, k);
            if !upper.is_dir() {
                continue;
            }
            let live = layout.root.join(&mount.rel);
            m.merge_dir(&upper, &live, &Path::new("/").join(&mount.rel), true, false)
                .with_context(|| format!("merge of {name} onto {}", live.display()))?;
        }
    }
    // Every live change made durable before the marker goes: each
    // directory changed is synced — never a syncfs of the root's
    // filesystems, which waits for whatever else writes there. A crash
    // before this leaves the marker: the merge is finished or rolled back.
    m.settle()?;
    let merged = m.merged;
    fs::remove_file(&marker).with_context(|| format!("cannot remove {}", marker.display()))?;
    sync_dir(state_dir)?;
    Ok(merged)
}

struct Merger<'a> {
    journal: &'a mut Journal,
    failpoint: Failpoint,
    merged: Merged,
    /// Copy path: the live name each multiply-linked upper inode was
    /// placed at first, so its other names become hard links again.
    linked: std::collections::HashMap<(u64, u64), PathBuf>,
    /// Copy path: upper files already copied beside their live name
    /// (and synced) by [`Merger::precopy`], waiting for their rename.
    copied: std::collections::HashMap<PathBuf, PathBuf>,
    /// The directories whose attributes the layer being merged changed
    /// ([`changed_dirs`]); `None`: all of its directories.
    dirs: Option<std::collections::HashSet<String>>,
    /// Live directories changed since the last [`Merger::settle`]
    /// (entries placed or removed, made, attributes set): fsynced once
    /// each — one journal commit for all of them instead of one per
    /// directory.
    to_sync: BTreeSet<PathBuf>,
    /// Upper entries applied across filesystems (copied, or a whiteout
    /// applied), removed only once the live directories are synced: a
    /// crash before leaves them in the upper, and a resumed merge applies
    /// them again (which changes nothing where they were placed). In
    /// order: a directory after its entries.
    applied_uppers: Vec<PathBuf>,
}

/// Upper entries held for removal before the live directories are synced
/// and they are removed ([`Merger::settle`]): bounds the merge's memory.
const SETTLE_EVERY: usize = 4096;

impl Merger<'_> {
    /// Makes every live change so far durable (each changed directory
    /// fsynced), then removes the upper entries it applied.
    fn settle(&mut self) -> Result<()> {
        for dir in std::mem::take(&mut self.to_sync) {
            sync_dir(&dir)?;
        }
        for u in std::mem::take(&mut self.applied_uppers) {
            let gone = match fs::symlink_metadata(&u) {
                Ok(m) if m.is_dir() => fs::remove_dir(&u),
                Ok(_) => fs::remove_file(&u),
                Err(_) => Ok(()),
            };
            gone.with_context(|| format!("cannot remove merged {}", u.display()))?;
        }
        Ok(())
    }

    /// Upper entry `u` was applied: removed at the next settle.
    fn applied_upper(&mut self, u: &Path) -> Result<()> {
        self.applied_uppers.push(u.to_path_buf());
        if self.applied_uppers.len() >= SETTLE_EVERY {
            self.settle()?;
        }
        Ok(())
    }
}

/// The run dir's record of the directories each layer made or changed
/// the attributes of (`dirs/LAYER`, one path a line, as the diff shows
/// it), written by the diff of the layer.
pub fn dirs_record(run: &RunDir, layer: usize) -> PathBuf {
    // With the layers it describes (in the scratch image when there is
    // one: they are gone or kept together).
    run.layers().join("dirs").join(layer.to_string())
}

/// The directories layer `layer` changed, from [`dirs_record`]; `None`
/// when it has no record (a run of an older disco: every directory it
/// holds is applied, as then). A directory a layer holds only because a
/// file in it changed keeps the live attributes: a module beside this
/// one, which this one never saw, may have changed them.
fn changed_dirs(run: &RunDir, layer: usize) -> Result<Option<std::collections::HashSet<String>>> {
    let file = dirs_record(run, layer);
    match fs::read_to_string(&file) {
        Ok(text) => Ok(Some(text.lines().map(str::to_string).collect())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

impl Merger<'_> {
    /// Merges directory `upper` onto the live directory `live` (which
    /// exists); `shown` is its path on the target system. The layer's own
    /// root is kept; any other upper directory is removed once empty.
    fn merge_dir(
        &mut self,
        upper: &Path,
        live: &Path,
        shown: &Path,
        is_layer_root: bool,
        made: bool,
    ) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(upper)
            .and_then(|e| {
                e.map(|e| e.map(|e| e.file_name()))
                    .collect::<io::Result<Vec<_>>>()
            })
            .with_context(|| format!("cannot read {}", upper.display()))?;
        names.sort();
        let mut touched = false;
        // Files, symlinks and whiteouts: journal all of them with one fsync,
        // then apply. Directories: one by one, recursively.
        let mut planned = Vec::new();
        let mut dirs = Vec::new();
        for name in names {
            let (u, l, s) = (upper.join(&name), live.join(&name), shown.join(&name));
            let um =
                fs::symlink_metadata(&u).with_context(|| format!("cannot read {}", u.display()))?;
            if um.is_dir() {
                dirs.push((u, l, s));
                continue;
            }
            let lm = fs::symlink_metadata(&l).ok();
            let seq = match &lm {
                None if is_whiteout(&um) => None,
                None => {
                    self.journal.append(&Undo::Remove { path: s.clone() })?;
                    None
                }
                Some(m) if !is_whiteout(&um) && same_entry(&u, &um, &l, m)? => {
                    planned.push((u, l, s, um, None, true));
                    continue;
                }
                Some(_) => Some(self.journal.append(&Undo::Restore {
                    path: s.clone(),
                    seq: self.journal.seq + 1,
                })?),
            };
            planned.push((u, l, s, um, seq, false));
        }
        self.journal.sync()?;
        // Every backup of this batch is made, and made durable, before any
        // live entry is replaced or deleted.
        let mut backed_up = false;
        for (_, l, _, _, seq, unchanged) in &planned {
            if let (Some(seq), false) = (seq, unchanged) {
                self.backup_to(l, *seq, false)?;
                backed_up = true;
            }
        }
        if backed_up {
            sync_dir(&self.journal.dir.join("b"))?;
        }
        self.precopy(
            planned
                .iter()
                .filter(|p| !p.5)
                .map(|(u, l, _, um, _, _)| (u.as_path(), l.as_path(), um)),
        )?;
        for (u, l, s, um, seq, unchanged) in planned {
            touched |= self.apply_leaf(&u, &l, &s, &um, seq, unchanged)?;
        }
        for (u, l, s) in dirs {
            touched |= self.entry(&u, &l, &s)?;
        }
        if is_layer_root {
            // The root of the layer carries the attributes of the root dir.
            self.dir_attrs(upper, live, shown)?;
        }
        if touched || made {
            self.to_sync.insert(live.to_path_buf());
        }
        Ok(())
    }

    /// Applies a file, symlink or whiteout whose undo record (`seq` for a
    /// backup) is already durable; true when the live directory changed.
    fn apply_leaf(
        &mut self,
        u: &Path,
        l: &Path,
        shown: &Path,
        um: &fs::Metadata,
        seq: Option<u64>,
        unchanged: bool,
    ) -> Result<bool> {
        if unchanged {
            fs::remove_file(u)?;
            self.merged.unchanged += 1;
            return Ok(false);
        }
        // The backup was made by the caller. A whiteout deletes the live
        // entry; a file keeps the live name until the rename replaces it.
        let whiteout = is_whiteout(um);
        if whiteout {
            if seq.is_some() {
                match fs::symlink_metadata(l) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(l)?,
                    Ok(_) => fs::remove_file(l)?,
                    Err(_) => {}
                }
            }
            if seq.is_some() {
                self.to_sync.insert(l.parent().unwrap_or(l).to_path_buf());
                self.applied_upper(u)?;
                self.applied(shown)?;
            } else {
                fs::remove_file(u)?;
            }
            return Ok(seq.is_some());
        }
        strip_overlay_xattrs(u);
        self.place(u, l, um)?;
        self.applied(shown)?;
        Ok(true)
    }

    /// Applies an upper directory; true when the live directory changed.
    fn entry(&mut self, u: &Path, l: &Path, shown: &Path) -> Result<bool> {
        let um = fs::symlink_metadata(u).with_context(|| format!("cannot read {}", u.display()))?;
        let lm = fs::symlink_metadata(l).ok();
        let opaque = is_opaque(u);
        let created = match &lm {
            Some(m) if m.is_dir() && !opaque => false,
            Some(_) => {
                let seq = self.journal.record(&Undo::Restore {
                    path: shown.to_path_buf(),
                    seq: self.journal.seq + 1,
                })?;
                self.backup_to(l, seq, true)?;
                true
            }
            None => {
                self.journal.record(&Undo::Remove {
                    path: shown.to_path_buf(),
                })?;
                true
            }
        };
        if created {
            fs::DirBuilder::new()
                .mode(um.mode() & 0o7777)
                .create(l)
                .with_context(|| format!("cannot create {}", l.display()))?;
            copy_attrs(u, l, &um)?;
            // From here on a restart merges into this new directory
            // instead of replacing it again.
            if opaque {
                let _ = xattr::remove(u, "trusted.overlay.opaque");
            }
            self.applied(shown)?;
        } else {
            self.dir_attrs(u, l, shown)?;
        }
        // A directory made here is synced whether or not anything is
        // placed in it (its own mode, owner and xattrs).
        self.merge_dir(u, l, shown, false, created)?;
        // Removed once its entries are (they may still wait for a settle).
        self.applied_upper(u)?;
        Ok(created)
    }

    /// Fixes a directory's mode, owner and xattrs to the upper's, recording
    /// the old ones, when they differ.
    fn dir_attrs(&mut self, u: &Path, l: &Path, shown: &Path) -> Result<()> {
        if let Some(dirs) = &self.dirs {
            let s = crate::fsutil::shown(shown);
            let s = if s.len() > 1 {
                s.trim_end_matches('/')
            } else {
                &s
            };
            if !dirs.contains(s) {
                return Ok(());
            }
        }
        let (um, lm) = (fs::symlink_metadata(u)?, fs::symlink_metadata(l)?);
        let (ux, lx) = (xattrs(u), xattrs(l));
        if um.mode() & 0o7777 == lm.mode() & 0o7777
            && um.uid() == lm.uid()
            && um.gid() == lm.gid()
            && ux == lx
        {
            return Ok(());
        }
        self.journal.record(&Undo::Attrs {
            path: shown.to_path_buf(),
            mode: lm.mode() & 0o7777,
            uid: lm.uid(),
            gid: lm.gid(),
            xattrs: lx,
        })?;
        copy_attrs(u, l, &um)?;
        self.to_sync.insert(l.to_path_buf());
        self.applied(shown)
    }

    /// Saves the live entry at `l` as backup `seq` (its record is already
    /// durable): a directory is moved there (renamed, or copied across
    /// filesystems); a file is hard-linked (or copied) and, with `vacate`,
    /// then unlinked.
    fn backup_to(&mut self, l: &Path, seq: u64, vacate: bool) -> Result<()> {
        let b = self.journal.backup_path(seq);
        let lm = fs::symlink_metadata(l)?;
        if lm.is_dir() {
            match fs::rename(l, &b) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    // Complete before it counts: a crash leaves only the .tmp.
                    let tmp = b.with_extension("tmp");
                    let _ = fs::remove_dir_all(&tmp);
                    copy_tree(l, &tmp)?;
                    fs::rename(&tmp, &b)?;
                    fs::remove_dir_all(l)?;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot back up {}", l.display())),
            }
        } else {
            match fs::hard_link(l, &b) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    let tmp = b.with_extension("tmp");
                    let _ = fs::remove_file(&tmp);
                    copy_entry(l, &tmp, true)?;
                    fs::rename(&tmp, &b)?;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot back up {}", l.display())),
            }
            if vacate {
                fs::remove_file(l).with_context(|| format!("cannot remove {}", l.display()))?;
            }
        }
        Ok(())
    }

    /// The copy path, for a batch of leaves about to be placed: each
    /// single-linked regular file on another filesystem than its live
    /// directory is copied beside its live name first, its writeback
    /// started, then all are fsynced — one journal commit covers most of
    /// them instead of one per file — and [`Merger::place`] only renames.
    /// A copy a crash leaves behind is replaced by a resumed merge and
    /// removed by a rollback (the name is derived from the live one).
    fn precopy<'p>(
        &mut self,
        leaves: impl Iterator<Item = (&'p Path, &'p Path, &'p fs::Metadata)>,
    ) -> Result<()> {
        let mut made = Vec::new();
        // The leaves of a batch share their live directory.
        let mut live_dev: Option<(PathBuf, Option<u64>)> = None;
        for (u, l, um) in leaves {
            if !um.is_file() || um.nlink() > 1 {
                continue;
            }
            let Some(dir) = l.parent() else { continue };
            let dev = match &live_dev {
                Some((d, dev)) if d == dir => *dev,
                _ => {
                    let dev = fs::metadata(dir).ok().map(|m| m.dev());
                    live_dev = Some((dir.to_path_buf(), dev));
                    dev
                }
            };
            if dev == Some(um.dev()) {
                continue;
            }
            strip_overlay_xattrs(u);
            let tmp = merge_temp(l);
            let mut copied = copy_entry(u, &tmp, false);
            if copied.is_err() && fs::symlink_metadata(&tmp).is_ok() {
                // Left by an interrupted merge: made again.
                let _ = fs::remove_file(&tmp);
                copied = copy_entry(u, &tmp, false);
            }
            if let Err(e) = copied {
                let _ = fs::remove_file(&tmp);
                for (_, t) in &made {
                    let _ = fs::remove_file(t);
                }
                return Err(e);
            }
            made.push((u.to_path_buf(), tmp));
        }
        for (_, t) in &made {
            fs::File::open(t)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", t.display()))?;
        }
        self.copied.extend(made);
        Ok(())
    }

    /// Moves upper entry `u` to live path `l`: one rename on the same
    /// filesystem (a hard link stays one, its names share the inode);
    /// else a copy beside `l` (or a link to where another name of the same
    /// upper inode was placed), fsync, rename; `u` is removed at the next
    /// settle ([`Merger::settle`]), once the live directory is synced. A
    /// failed copy leaves no temporary behind.
    fn place(&mut self, u: &Path, l: &Path, um: &fs::Metadata) -> Result<()> {
        if let Ok(m) = fs::symlink_metadata(l) {
            if m.is_dir() {
                // A file replacing a directory: the directory was backed up (moved) already.
                bail!("{} is still a directory", l.display());
            }
        }
        match fs::rename(u, l) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let tmp = merge_temp(l);
                if self.copied.get(u) == Some(&tmp) {
                    self.copied.remove(u);
                    fs::rename(&tmp, l)
                        .with_context(|| format!("cannot move {} into place", l.display()))?;
                    return self.applied_upper(u);
                }
                let _ = fs::remove_file(&tmp);
                let key = (um.dev(), um.ino());
                // Looked up whatever nlink says now: placing the first name
                // removed it from the upper.
                let first = um
                    .is_file()
                    .then(|| self.linked.get(&key).cloned())
                    .flatten();
                let made = match &first {
                    Some(other) => fs::hard_link(other, &tmp).map_err(anyhow::Error::from),
                    None => copy_entry(u, &tmp, true),
                };
                let placed = made.and_then(|()| {
                    fs::rename(&tmp, l)
                        .with_context(|| format!("cannot move {} into place", l.display()))
                });
                if let Err(e) = placed {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                if um.is_file() && um.nlink() > 1 && first.is_none() {
                    self.linked.insert(key, l.to_path_buf());
                }
                self.applied_upper(u)
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot move {} to {}", u.display(), l.display()))
            }
        }
    }

    /// Counts an applied entry (`_shown`, its path on the target: a
    /// count, not a list of them, so a merge of 200,000 paths holds none);
    /// honours the failpoint.
    fn applied(&mut self, _shown: &Path) -> Result<()> {
        self.merged.applied += 1;
        if self.failpoint.abort_after == Some(self.merged.applied) {
            output::error(&format!(
                "DISCO_FAILPOINT: aborting after {} applied entries",
                self.merged.applied
            ));
            std::process::abort();
        }
        Ok(())
    }
}

/// Copies a file, symlink, FIFO, socket or device node with mode, owner,
/// xattrs and mtime. File data is copied hole-aware (a sparse file stays
/// sparse) and fsynced (`durable`; else its writeback is only started, for
/// the caller to fsync); special files are made anew with `mknod`, never
/// opened (opening a FIFO would wait for a writer forever).
fn copy_entry(src: &Path, dst: &Path, durable: bool) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let m = fs::symlink_metadata(src)?;
    let ft = m.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
            .with_context(|| format!("cannot create {}", dst.display()))?;
        std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid()))?;
        return Ok(());
    }
    if !ft.is_file() {
        use nix::sys::stat::{mknod, Mode, SFlag};
        let kind = if ft.is_fifo() {
            SFlag::S_IFIFO
        } else if ft.is_socket() {
            SFlag::S_IFSOCK
        } else if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else {
            bail!("{}: unknown file type", src.display());
        };
        mknod(dst, kind, Mode::from_bits_truncate(0o600), m.rdev())
            .with_context(|| format!("cannot create {}", dst.display()))?;
        std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid()))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        for (k, v) in xattrs(src) {
            let _ = xattr::set(dst, &k, &v);
        }
        return Ok(());
    }
    let from = fs::File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
    let to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .with_context(|| format!("cannot create {}", dst.display()))?;
    crate::fsutil::copy_sparse(&from, &to, m.len())
        .with_context(|| format!("cannot copy to {}", dst.display()))?;
    std::os::unix::fs::fchown(&to, Some(m.uid()), Some(m.gid()))?;
    to.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))?;
    for (k, v) in xattrs(src) {
        let _ = xattr::set(dst, &k, &v);
    }
    // chown cleared set-id bits and file capabilities: set the mode again
    // (xattrs, security.capability included, were set after it).
    to.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))?;
    let times = [
        nix::sys::time::TimeSpec::new(m.atime(), m.atime_nsec()),
        nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec()),
    ];
    let _ = nix::sys::stat::futimens(std::os::fd::AsRawFd::as_raw_fd(&to), &times[0], &times[1]);
    if durable {
        to.sync_all()
            .with_context(|| format!("cannot sync {}", dst.display()))?;
    } else {
        // SAFETY: a valid descriptor; only starts the writeback of its pages.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&to),
                0,
                0,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    Ok(())
}

/// The temporary name a copy for live path `l` gets beside it.
fn merge_temp(l: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(l.file_name().unwrap_or_default());
    name.push(".disco-merge");
    l.with_file_name(name)
}

/// Copies a directory tree (backups across filesystems, undo, the layers
/// `--keep` keeps out of the scratch image): modes, owners, xattrs
/// (overlayfs' own included), whiteouts and other special files as they are.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let m = fs::symlink_metadata(src)?;
    if !m.is_dir() {
        return copy_entry(src, dst, true);
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .with_context(|| format!("cannot create {}", dst.display()))?;
    for e in fs::read_dir(src)? {
        let e = e?;
        copy_tree(&e.path(), &dst.join(e.file_name()))?;
    }
    copy_attrs(src, dst, &m)
}

/// Sets mode, owner and xattrs of `dst` to those of `src` (`sm` its metadata).
fn copy_attrs(src: &Path, dst: &Path, sm: &fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(dst, Some(sm.uid()), Some(sm.gid()))
        .with_context(|| format!("cannot chown {}", dst.display()))?;
    if !sm.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(sm.mode() & 0o7777))
            .with_context(|| format!("cannot chmod {}", dst.display()))?;
    }
    let want = xattrs(src);
    for (k, _) in xattrs(dst) {
        if !want.iter().any(|(n, _)| *n == k) {
            let _ = xattr::remove(dst, &k);
        }
    }
    for (k, v) in want {
        xattr::set(dst, &k, &v).with_context(|| format!("cannot set {k} on {}", dst.display()))?;
    }
    Ok(())
}

/// True when upper entry `u` would change nothing at live `l`.
fn same_entry(u: &Path, um: &fs::Metadata, l: &Path, lm: &fs::Metadata) -> Result<bool> {
    if um.file_type() != lm.file_type() || um.uid() != lm.uid() || um.gid() != lm.gid() {
        return Ok(false);
    }
    if um.file_type().is_symlink() {
        return Ok(fs::read_link(u)? == fs::read_link(l)?);
    }
    if !um.is_file()
        || um.mode() & 0o7777 != lm.mode() & 0o7777
        || um.len() != lm.len()
        || xattrs(u) != xattrs(l)
    {
        return Ok(false);
    }
    same_bytes(u, l, um.len(), lm.len())
}

fn strip_overlay_xattrs(path: &Path) {
    if let Ok(names) = xattr::list(path) {
        for n in names {
            if n.to_string_lossy().starts_with("trusted.overlay.") {
                let _ = xattr::remove(path, &n);
            }
        }
    }
}

fn write_durably(path: &Path, content: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

fn sync_fs(path: &Path) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f))
        .with_context(|| format!("syncfs {}", path.display()))
}

/// What [`recover`] found and did.
#[derive(Debug)]
pub enum Recovered {
    /// No merge was interrupted.
    Nothing,
    /// The interrupted merge is finished now.
    Finished(RunDir, Merged),
    /// Its in-memory layers were gone: what it merged was rolled back.
    RolledBack,
}

/// Finishes a merge that a crash interrupted, if `STATE/merging` says so,
/// or rolls it back when its in-memory layers are gone.
pub fn recover(state_dir: &Path) -> Result<Recovered> {
    let marker = marker(state_dir);
    let id = match fs::read_to_string(&marker) {
        Ok(id) => id.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recovered::Nothing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", marker.display())),
    };
    crate::names::Name::parse(&id, marker.display())?;
    let run = RunDir {
        path: state_dir.join("run").join(&id),
        id: id.clone(),
    };
    let layout_path = run.path.join("layout.json");
    let layout: Layout = serde_json::from_slice(&fs::read(&layout_path).with_context(|| {
        format!(
            "{} names run {id}, but {} is missing",
            marker.display(),
            layout_path.display()
        )
    })?)
    .with_context(|| format!("{} is damaged", layout_path.display()))?;
    // Layers kept in the scratch image: mount it again to finish the merge.
    let mem = run.path.join(crate::run::MEM);
    if run.layers_lost() && crate::sandbox::scratch::image(state_dir).is_file() {
        if let Err(e) = crate::sandbox::scratch::mount(state_dir, &mem, None) {
            output::warning(&format!("{e:#}"));
        }
    }
    if run.layers_lost() {
        // In-memory layers live in disco's own mount namespace: they went
        // with a killed disco or a restarted machine. What was merged is
        // rolled back from the backups, so the root is as before that run.
        output::warning(&format!(
            "a merge of run {id} was interrupted and its in-memory layers are gone (disco was killed or the machine restarted): rolling back what it merged"
        ));
        let backup = backup_root(state_dir).join(&id);
        if backup.join("journal").is_file() {
            let lines = undo_backup(&backup, &layout.root, Failpoint::default())?;
            output::info(&format!(
                "rolled back the interrupted merge of run {id}: {} entries restored",
                lines.len()
            ));
        }
        fs::remove_file(&marker).with_context(|| format!("cannot remove {}", marker.display()))?;
        sync_dir(state_dir)?;
        let _ = run.remove();
        return Ok(Recovered::RolledBack);
    }
    output::warning(&format!(
        "a merge of run {id} was interrupted; finishing it first"
    ));
    let merged = merge(state_dir, &run, &layout, Failpoint::default())?;
    output::info(&format!(
        "finished the interrupted merge of run {id}: {} more entries applied",
        merged.applied
    ));
    Ok(Recovered::Finished(run, merged))
}

/// After a merge of run `id` failed (disk full, read-only root): puts
/// back what it merged from its backups and clears the marker, so the
/// root is as before the run. Returns how many entries were restored.
pub fn roll_back(state_dir: &Path, id: &str, root: &Path) -> Result<usize> {
    let backup = backup_root(state_dir).join(id);
    let restored = if backup.join("journal").is_file() {
        undo_backup(&backup, root, Failpoint::default())?.len()
    } else {
        0
    };
    let marker = marker(state_dir);
    match fs::remove_file(&marker) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", marker.display()))
        }
        _ => {}
    }
    sync_dir(state_dir)?;
    Ok(restored)
}

/// Keeps the newest `keep` backup directories.
pub fn prune_backups(state_dir: &Path, keep: usize) -> Result<()> {
    let dir = backup_root(state_dir);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut runs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    runs.sort();
    let excess = runs.len().saturating_sub(keep);
    for old in &runs[..excess] {
        fs::remove_dir_all(old)
            .with_context(|| format!("cannot remove old backup {}", old.display()))?;
    }
    Ok(())
}

/// The backup directory of the last merged run that is not undone yet.
fn last_backup(state_dir: &Path) -> Result<PathBuf> {
    let dir = backup_root(state_dir);
    let mut runs: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("journal").is_file())
                .collect()
        })
        .unwrap_or_default();
    runs.sort();
    runs.pop().with_context(|| {
        format!(
            "nothing to undo: no merged dance has a backup in {}",
            dir.display()
        )
    })
}

/// `disco undo`: restores ROOT as it was before the last merged dance.
/// Returns the lines it reports.
pub fn undo(state_dir: &Path, root: &Path, failpoint: Failpoint) -> Result<Vec<String>> {
    let last = last_backup(state_dir)?;
    undo_backup(&last, root, failpoint)
}

/// What `disco undo` would do, without doing it (noop): one line per
/// journal record of the last merged run, newest first as undo walks them.
pub fn undo_preview(state_dir: &Path) -> Result<Vec<String>> {
    let last = last_backup(state_dir)?;
    let id = last
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let text = fs::read_to_string(last.join("journal"))?;
    let mut lines = Vec::new();
    for l in text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .rev()
    {
        let rec: Undo = serde_json::from_str(l)
            .with_context(|| format!("{} is damaged", last.join("journal").display()))?;
        lines.push(match rec {
            Undo::Remove { path } => format!(
                "would remove {} (created by run {id})",
                crate::fsutil::shown(&path)
            ),
            Undo::Restore { path, .. } => {
                format!("would restore {}", crate::fsutil::shown(&path))
            }
            Undo::Attrs { path, .. } => format!(
                "would restore mode/owner of {}",
                crate::fsutil::shown(&path)
            ),
        });
    }
    Ok(lines)
}

/// Finishes an undo that a crash interrupted (its progress log is there),
/// before anything else touches the root. Returns its lines.
pub fn finish_interrupted_undo(state_dir: &Path) -> Result<Option<Vec<String>>> {
    let Ok(entries) = fs::read_dir(backup_root(state_dir)) else {
        return Ok(None);
    };
    let mut runs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(UNDO_LOG).is_file() && p.join("journal").is_file())
        .collect();
    runs.sort();
    let Some(run) = runs.pop() else {
        return Ok(None);
    };
    let root = fs::read(run.join("root"))
        .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
        .with_context(|| {
            format!(
                "{}: the root of the interrupted undo is unknown",
                run.display()
            )
        })?;
    output::warning(&format!(
        "an undo of run {} was interrupted; finishing it first",
        run.file_name().unwrap_or_default().to_string_lossy()
    ));
    undo_backup(&run, &root, Failpoint::default()).map(Some)
}

/// The progress log of an undo, `BACKUP/undo.log`: `begin I INO` before
/// record I swaps anything (INO: the live entry's inode then, or `-`),
/// `done I` after. A resumed undo skips what is done and tells, for the
/// record it was in, whether the swap happened by the live inode.
const UNDO_LOG: &str = "undo.log";

struct Progress {
    file: fs::File,
    done: BTreeSet<usize>,
    begun: std::collections::BTreeMap<usize, Option<u64>>,
    ops: usize,
    abort_after: Option<usize>,
}

impl Progress {
    fn open(dir: &Path, abort_after: Option<usize>) -> Result<Progress> {
        let path = dir.join(UNDO_LOG);
        let text = fs::read_to_string(&path).unwrap_or_default();
        let (mut done, mut begun) = (BTreeSet::new(), std::collections::BTreeMap::new());
        // Only complete lines count: a crash can tear the last one.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["done", i] => {
                    if let Ok(i) = i.parse() {
                        done.insert(i);
                    }
                }
                ["begin", i, ino] => {
                    if let Ok(i) = i.parse() {
                        begun.insert(i, ino.parse().ok());
                    }
                }
                _ => {}
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if text.len() != text.rfind('\n').map_or(0, |i| i + 1) {
            file.set_len(text.rfind('\n').map_or(0, |i| i + 1) as u64)?;
        }
        Ok(Progress {
            file,
            done,
            begun,
            ops: 0,
            abort_after,
        })
    }

    /// `begin` must be on disk before its swap: a resumed undo tells by
    /// it whether the swap happened. `done` need not be: every record is
    /// safe to apply again (a removal of what is gone, a swap that the
    /// begin line shows done), and the root is synced before the journal
    /// is marked undone.
    fn begin(&mut self, i: usize, ino: Option<u64>) -> Result<()> {
        let ino = ino.map_or("-".to_string(), |n| n.to_string());
        self.file
            .write_all(format!("begin {i} {ino}\n").as_bytes())?;
        self.file.sync_data().context("cannot sync the undo log")
    }

    fn done(&mut self, i: usize) -> Result<()> {
        self.done.insert(i);
        self.file
            .write_all(format!("done {i}\n").as_bytes())
            .context("cannot write the undo log")
    }

    /// Counts a rename or unlink; honours the failpoint.
    fn op(&mut self) {
        self.ops += 1;
        if self.abort_after == Some(self.ops) {
            output::error(&format!(
                "DISCO_FAILPOINT: aborting the undo after {} operations",
                self.ops
            ));
            std::process::abort();
        }
    }
}

fn ino(p: &Path) -> Option<u64> {
    fs::symlink_metadata(p).ok().map(|m| m.ino())
}

/// Removes a file, symlink or whole directory; absent is fine.
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `renameat2(RENAME_EXCHANGE)`: swaps two entries atomically.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(None, a, None, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
        .map_err(io::Error::from)
}

/// Restores ROOT from one run's backup directory (its journal, newest
/// record first), resumably; marks the journal undone at the end.
///
/// One loop over the journal with one arm per record kind; the arms' work
/// is in [`restore_entry`] and [`restore_attrs`], what stays is the
/// resumable bookkeeping, kept in one place on purpose.
fn undo_backup(last: &Path, root: &Path, failpoint: Failpoint) -> Result<Vec<String>> {
    let id = last
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    check_merged_root(last, &root, &id)?;
    let records = read_journal(last)?;
    let mut progress = Progress::open(last, failpoint.undo_abort_after)?;
    let mut said = Vec::new();
    for (i, rec) in records.iter().enumerate().rev() {
        if progress.done.contains(&i) {
            continue;
        }
        let path = match rec {
            Undo::Remove { path } | Undo::Restore { path, .. } | Undo::Attrs { path, .. } => path,
        };
        let shown = crate::fsutil::shown(path);
        let Some((dir, name)) = entry_dir(&root, path, &shown)? else {
            progress.done(i)?;
            continue;
        };
        let live = name.map_or_else(|| dir.path(), |n| dir.join(n));
        match rec {
            Undo::Remove { .. } => {
                if fs::symlink_metadata(&live).is_ok() {
                    remove_any(&live).with_context(|| format!("cannot remove {shown}"))?;
                    progress.op();
                    said.push(format!("removed {shown} (created by run {id})"));
                }
            }
            Undo::Restore { seq, .. } => {
                let b = last.join("b").join(seq.to_string());
                if restore_entry(&mut progress, i, &b, &dir, name, &live, &shown)? {
                    said.push(format!("restored {shown}"));
                }
                progress.done(i)?;
                continue;
            }
            Undo::Attrs {
                mode,
                uid,
                gid,
                xattrs: old,
                ..
            } => {
                restore_attrs(&live, *mode, *uid, *gid, old, &shown)?;
                said.push(format!("restored mode/owner of {shown}"));
            }
        }
        progress.done(i)?;
    }
    sync_fs(&root)?;
    fs::rename(last.join("journal"), last.join("journal.undone"))?;
    let _ = fs::remove_file(last.join(UNDO_LOG));
    sync_dir(last)?;
    said.reverse();
    Ok(said)
}

/// Refuses to undo into another root than the one the run merged into.
fn check_merged_root(last: &Path, root: &Path, id: &str) -> Result<()> {
    if let Ok(merged_root) = fs::read(last.join("root")) {
        let merged_root = PathBuf::from(std::ffi::OsString::from_vec(merged_root));
        if merged_root != root {
            bail!(
                "the last merged dance (run {id}) changed {}, not {}: give --root {}",
                merged_root.display(),
                root.display(),
                merged_root.display()
            );
        }
    }
    Ok(())
}

/// The records of a run's journal, oldest first.
fn read_journal(last: &Path) -> Result<Vec<Undo>> {
    let journal = last.join("journal");
    let text = fs::read_to_string(&journal)
        .with_context(|| format!("cannot read {}", journal.display()))?;
    // A torn last record (a crash while journaling) was never applied.
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is damaged", journal.display()))
}

/// The directory of a journaled entry, as the dance left it (no symlink on
/// the way), and its name in it (`None` for the root itself); drops a copy
/// an interrupted merge made beside it and never placed. `None` (with a
/// warning) when that directory is no longer the one the dance left.
fn entry_dir<'p>(
    root: &Path,
    path: &'p Path,
    shown: &str,
) -> Result<Option<(crate::anchor::Anchor, Option<&'p std::ffi::OsStr>)>> {
    let (dir, name) = match crate::anchor::Anchor::parent_of(root, path) {
        Some((Ok(dir), name)) => (dir, Some(name)),
        Some((Err(e), _)) => {
            output::warning(&format!(
                "undo: skipped {shown}: its directory is not the one the dance left ({})",
                crate::anchor::why(&e)
            ));
            return Ok(None);
        }
        None => match crate::anchor::Anchor::open(root, Path::new("/")) {
            Ok(dir) => (dir, None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", root.display())),
        },
    };
    if let Some(n) = name {
        let tmp = merge_temp(&dir.join(n));
        if fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_file()) {
            let _ = fs::remove_file(&tmp);
        }
    }
    Ok(Some((dir, name)))
}

/// Sets a directory's mode, owner and xattrs back to what they were.
fn restore_attrs(
    live: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
    old: &[(String, Vec<u8>)],
    shown: &str,
) -> Result<()> {
    std::os::unix::fs::lchown(live, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {shown}"))?;
    fs::set_permissions(live, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {shown}"))?;
    for (k, _) in xattrs(live) {
        if !old.iter().any(|(n, _)| *n == k) {
            let _ = xattr::remove(live, &k);
        }
    }
    for (k, v) in old {
        let _ = xattr::set(live, k, v);
    }
    Ok(())
}

/// Restores one entry from backup `b` to `live` (in `dir`, named `name`),
/// resumably: record `i`'s `begin` line is on disk before the swap, and
/// a resumed undo tells by the live inode whether the swap happened.
/// True when something was put back.
fn restore_entry(
    progress: &mut Progress,
    i: usize,
    b: &Path,
    dir: &crate::anchor::Anchor,
    name: Option<&std::ffi::OsStr>,
    live: &Path,
    shown: &str,
) -> Result<bool> {
    let tmp = name.map(|n| {
        let mut t = std::ffi::OsString::from(".");
        t.push(n);
        t.push(".disco-undo");
        dir.join(&t)
    });
    let now = ino(live);
    if let Some(before) = progress.begun.get(&i).copied() {
        // Resumed inside this record: did its swap happen?
        let swapped = match before {
            None => now.is_some(),
            Some(x) => now.is_some_and(|n| n != x),
        };
        if swapped {
            // What the swap moved aside is the dance's version.
            if let (Some(x), Some(bi)) = (before, ino(b)) {
                if x == bi {
                    remove_any(b)?;
                }
            }
            if let Some(t) = &tmp {
                remove_any(t)?;
            }
            return Ok(true);
        }
    }
    let Some(b_ino) = ino(b) else {
        // Recorded, then interrupted before the backup was made.
        return Ok(false);
    };
    if now == Some(b_ino) {
        // The backup is a hard link of what is live: nothing to put back.
        remove_any(b)?;
        return Ok(false);
    }
    progress.begin(i, now)?;
    let swapped = match exchange_or_rename(b, live, now.is_some()) {
        Ok(()) => {
            progress.op();
            // After an exchange the backup's name holds the dance's version.
            remove_any(b)?;
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            // The backup is on another filesystem: copy it
            // beside the target first, complete, then swap.
            let t = tmp.as_ref().context("the root itself has no backup")?;
            remove_any(t)?;
            copy_tree(b, t)?;
            exchange_or_rename(t, live, now.is_some())?;
            progress.op();
            remove_any(t)?;
            Ok(())
        }
        Err(e) => Err(e),
    };
    swapped.with_context(|| format!("cannot restore {shown}"))?;
    Ok(true)
}

/// Puts `from` at `to`: swapped in atomically when `to` exists (so `to`
/// is always either its old or its new version), renamed otherwise.
fn exchange_or_rename(from: &Path, to: &Path, to_exists: bool) -> io::Result<()> {
    if to_exists {
        exchange(from, to)
    } else {
        fs::rename(from, to)
    }
}
