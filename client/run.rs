//! The scratch directory of one dance, `STATE/run/RUN/`, and its layout.
//!
//! Owns run ids and every path inside a run directory, so the sandbox
//! (which mounts them), the diff (which walks them) and later the merge
//! agree on one layout. Paths handed to overlayfs are short and relative to
//! the run directory (`u/3-0`), because all lower layers of a module must
//! fit in one page of mount options.
//!
//! ```text
//! STATE/run/RUN/
//!   layout.json   the modules and mounts of this run (Layout)
//!   u/I-K         upper layer of module I (1-based) on mount K (0 = ROOT)
//!   w/I-K         its overlayfs work dir
//!   s/K           the read-only shim layer of mount K
//!   merged/       where the sandbox's root overlay is mounted
//!   params/       the node's merged parameters, bound read-only in the sandbox
//!   mem/          the scratch filesystem (STATE/scratch.img, loop-mounted)
//!                 holding u/, w/, s/ when the state dir is inside ROOT
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// A filesystem the sandbox overlays: ROOT itself (`rel` empty) or a real
/// filesystem mounted below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Path relative to ROOT; empty for ROOT itself.
    pub rel: PathBuf,
    pub fstype: String,
}

/// What a run directory holds: which module each layer index is, and
/// which mount each mount index is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub root: PathBuf,
    /// Layer names, index 0 is layer 1 (`u/1-K`).
    pub layers: Vec<String>,
    pub mounts: Vec<Mount>,
}

/// One run's scratch directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `STATE/run/ID/` for a new run `id` ([`new_run_id`]), 0700.
    pub fn create(state_dir: &Path, id: &str) -> Result<RunDir> {
        let id = id.to_string();
        let path = state_dir.join("run").join(&id);
        fs::create_dir_all(path.parent().expect("has parent"))
            .and_then(|_| {
                use std::os::unix::fs::DirBuilderExt;
                fs::DirBuilder::new().mode(0o700).create(&path)
            })
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        Ok(RunDir { id, path })
    }

    /// Upper layer of layer `i` (1-based) on mount `k`, relative to the run dir.
    pub fn upper_rel(i: usize, k: usize) -> PathBuf {
        PathBuf::from(format!("u/{i}-{k}"))
    }
    pub fn work_rel(i: usize, k: usize) -> PathBuf {
        PathBuf::from(format!("w/{i}-{k}"))
    }
    pub fn shim_rel(k: usize) -> PathBuf {
        PathBuf::from(format!("s/{k}"))
    }
    /// Squash `j` of mount `k` (see `sandbox::squash`).
    pub fn squash_rel(j: usize, k: usize) -> PathBuf {
        PathBuf::from(format!("q/{j}-{k}"))
    }
    /// Where `u/`, `w/` and `s/` live: the run dir itself, or `mem/`, a
    /// tmpfs, when the run dir is inside a filesystem the sandbox overlays
    /// (overlayfs refuses a lower layer below another lower layer's root,
    /// and ROOT `/` is above everything on its filesystem).
    pub fn layers(&self) -> PathBuf {
        let mem = self.path.join(MEM);
        if mem.is_dir() {
            mem
        } else {
            self.path.clone()
        }
    }
    pub fn upper(&self, i: usize, k: usize) -> PathBuf {
        self.layers().join(Self::upper_rel(i, k))
    }
    pub fn work(&self, i: usize, k: usize) -> PathBuf {
        self.layers().join(Self::work_rel(i, k))
    }
    pub fn shim(&self, k: usize) -> PathBuf {
        self.layers().join(Self::shim_rel(k))
    }

    /// True when the layers were in memory and that memory is gone (the
    /// machine rebooted since): `mem/` exists but is no longer a mount.
    pub fn layers_lost(&self) -> bool {
        let mem = self.path.join(MEM);
        mem.is_dir() && !is_mount_point(&mem)
    }
    pub fn merged(&self) -> PathBuf {
        self.path.join("merged")
    }
    pub fn params(&self) -> PathBuf {
        self.path.join("params")
    }

    pub fn save_layout(&self, layout: &Layout) -> Result<()> {
        let p = self.path.join("layout.json");
        crate::fsutil::write_private(&p, &serde_json::to_vec_pretty(layout)?)
            .with_context(|| format!("cannot write {}", p.display()))
    }

    /// Removes the whole run directory (emptying and unmounting its
    /// scratch filesystem, whose space goes back to the disk).
    pub fn remove(&self) -> Result<()> {
        self.empty_mem();
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove scratch {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }
}

impl RunDir {
    /// Empties the scratch filesystem mounted at `mem/` (its blocks go
    /// back to the disk: `discard`, and `FITRIM` if the image still holds
    /// them) and unmounts it; nothing when it is not mounted. A crowded
    /// one ([`crate::sandbox::scratch::crowded`]) is unmounted and its
    /// image removed instead: the next run makes it anew.
    pub fn empty_mem(&self) {
        let mem = self.path.join(MEM);
        let state = self.path.parent().and_then(Path::parent);
        if let (Some(state), true) = (state, is_mount_point(&mem)) {
            if crate::sandbox::scratch::crowded(&mem) {
                unmount_mem(&self.path);
                let _ = fs::remove_file(crate::sandbox::scratch::image(state));
                return;
            }
        }
        if is_mount_point(&mem) {
            // A run that had secrets may have left them in the image's
            // freed blocks (a rendered file, its parameter tree): all of
            // them go back, whatever their amount.
            let secrets = [self.path.join("params"), mem.join("params")]
                .iter()
                .any(|p| fs::read_dir(p.join("secrets")).is_ok_and(|mut d| d.next().is_some()));
            for e in fs::read_dir(&mem).into_iter().flatten().flatten() {
                if e.file_name() != "lost+found" {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
            // What the run wrote goes back to the disk now, not when the
            // image is next used.
            if let Some(state) = self.path.parent().and_then(Path::parent) {
                crate::sandbox::scratch::trim(
                    &mem,
                    &crate::sandbox::scratch::image(state),
                    secrets,
                );
            }
        }
        unmount_mem(&self.path);
    }
}

/// The name of the in-memory layers directory inside a run dir.
pub const MEM: &str = "mem";

/// The file that says "merge of RUN in progress" (its content is RUN).
pub fn merge_marker(state_dir: &Path) -> PathBuf {
    state_dir.join("merging")
}

/// True when `dir` is the root of a mount (another device than its parent).
pub fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(dir), dir.parent().map(fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Unmounts a run dir's in-memory layers, if mounted.
pub fn unmount_mem(run_dir: &Path) {
    let mem = run_dir.join(MEM);
    if is_mount_point(&mem) {
        let _ = nix::mount::umount2(&mem, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A run id that sorts by time: `20261123T173314Z-4242`.
pub fn new_run_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let compact: String = stamp.chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{compact}-{}", std::process::id())
}

/// Keeps only the newest `keep` run directories (kept scratch of failed or
/// `--keep` runs), oldest removed first.
pub fn prune(state_dir: &Path, keep: usize) -> Result<()> {
    let dir = state_dir.join("run");
    let mut runs: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(e) => e
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    // Never the run an interrupted merge still needs.
    if let Ok(id) = fs::read_to_string(state_dir.join("merging")) {
        runs.retain(|r| r.file_name().is_none_or(|n| n != id.trim()));
    }
    runs.sort();
    let excess = runs.len().saturating_sub(keep);
    for old in &runs[..excess] {
        unmount_mem(old);
        fs::remove_dir_all(old)
            .with_context(|| format!("cannot remove old scratch {}", old.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_are_names() {
        let id = new_run_id();
        assert!(crate::names::is_valid(id.as_bytes()), "{id}");
        assert_eq!(
            id.len(),
            "20261123T173314Z".len() + 1 + std::process::id().to_string().len()
        );
    }
}
