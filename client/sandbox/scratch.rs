//! The disk-backed scratch: when the state dir lies inside a filesystem
//! the sandbox overlays (the usual node: ROOT `/`, state `/var/lib/disco`),
//! overlayfs refuses upper layers below a lower layer's root, so the
//! layers live in their own filesystem: a sparse ext4 image,
//! `STATE/scratch.img`, made once (`mkfs.ext4`) and loop-mounted for each
//! run at `STATE/run/RUN/mem` in disco's own mount namespace.
//!
//! On disk, not in RAM: a package install writing gigabytes leaves
//! `Shmem` flat. Its size is `scratch_max` (default: the free space of the
//! state dir's filesystem when the image is made, less 10%); blocks are
//! used only as written and given back on delete (`discard`). A run
//! killed in its merge leaves its layers in the image: the next run
//! mounts it again and finishes the merge.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The image in a state dir.
pub fn image(state_dir: &Path) -> PathBuf {
    state_dir.join("scratch.img")
}

/// `scratch_max` when not set: the free space of `state_dir`'s
/// filesystem, less 10%.
pub fn default_size(state_dir: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(state_dir)
        .with_context(|| format!("cannot read the free space of {}", state_dir.display()))?;
    let free = st.blocks_available() * st.fragment_size();
    Ok(free / 10 * 9)
}

/// Makes the image when it is missing (or, with an explicit `size`, of
/// another size), mounts it at `mem` and, unless `keep` (a merge to
/// finish), empties it of what an earlier run left.
pub fn mount(state_dir: &Path, mem: &Path, size: Option<u64>, keep: bool) -> Result<()> {
    match mount_once(state_dir, mem, size, keep, false) {
        // A damaged image (a crash without a journal): made anew, unless
        // it holds a merge to finish.
        Err(_) if !keep => mount_once(state_dir, mem, size, keep, true),
        r => r,
    }
}

fn mount_once(
    state_dir: &Path,
    mem: &Path,
    size: Option<u64>,
    keep: bool,
    force: bool,
) -> Result<()> {
    let img = image(state_dir);
    let current = fs::metadata(&img).ok().map(|m| m.len());
    let remake = force
        || match (current, size) {
            (None, _) => true,
            (Some(have), Some(want)) => have != want && !keep,
            (Some(_), None) => false,
        };
    if remake {
        let want = match size {
            Some(s) => s,
            None => default_size(state_dir)?,
        };
        if want < 64 << 20 {
            bail!(
                "scratch_max: {} is too small for the scratch filesystem (64 MiB at least)",
                crate::fsutil::human_bytes(want)
            );
        }
        let _ = fs::remove_file(&img);
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&img)
            .with_context(|| format!("cannot create {}", img.display()))?;
        f.set_len(want)
            .with_context(|| format!("cannot size {}", img.display()))?;
        drop(f);
        let out = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                "-L",
                "disco-scratch",
            ])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(&img)
            .output()
            .context("cannot run mkfs.ext4 (e2fsprogs) to make the scratch filesystem")?;
        if !out.status.success() {
            let _ = fs::remove_file(&img);
            bail!(
                "cannot make the scratch filesystem {}: {}",
                img.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let out = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,nosuid,nodev,discard"])
        .arg(&img)
        .arg(mem)
        .output()
        .context("cannot run mount (util-linux) for the scratch filesystem")?;
    if !out.status.success() {
        bail!(
            "cannot mount the scratch filesystem {} on {}: {}",
            img.display(),
            mem.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !keep {
        for e in fs::read_dir(mem)?.flatten() {
            if e.file_name() == "lost+found" {
                continue;
            }
            let p = e.path();
            let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            gone.with_context(|| format!("cannot clear the scratch's old {}", p.display()))?;
        }
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(mem, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// True when the scratch filesystem at `mem` is (nearly) full: the error
/// of a step that ran out of it names `scratch_max`.
pub fn is_full(mem: &Path) -> bool {
    nix::sys::statvfs::statvfs(mem)
        .map(|st| st.blocks_available() * st.fragment_size() < 1 << 20)
        .unwrap_or(false)
}

use std::os::unix::fs::OpenOptionsExt;
