//! A real Debian 12 root made with `debootstrap --variant=minbase`, built
//! once (cached under `target/debian-bookworm`, shared by every test
//! binary through a lock) and copied per test. When the Debian mirror
//! cannot be reached the root cannot be made: [`root`] says so in one
//! line and the caller skips.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh copy of the Debian root in `dir/debian`, or `None` (said on
/// stderr) when it cannot be made here.
pub fn root(dir: &Path) -> Option<PathBuf> {
    let template = template()?;
    let copy = dir.join("debian");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&template)
        .arg(&copy)
        .status()
        .ok()?;
    assert!(st.success(), "cannot copy the Debian root");
    Some(copy)
}

fn template() -> Option<PathBuf> {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("debian-bookworm");
    let done = base.join("root");
    fs::create_dir_all(&base).unwrap();
    // One build for all test binaries: the first takes the lock and builds.
    let lock = fs::File::create(base.join("lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if done.join("etc/debian_version").is_file() {
        return Some(done);
    }
    let tmp = base.join("building");
    let _ = fs::remove_dir_all(&tmp);
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&tmp)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            fs::rename(&tmp, &done).unwrap();
            Some(done)
        }
        Ok(o) => {
            let _ = fs::remove_dir_all(&tmp);
            eprintln!(
                "skipped: debootstrap --variant=minbase bookworm failed (is the Debian mirror reachable?): {}",
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            );
            None
        }
        Err(e) => {
            eprintln!("skipped: debootstrap is not installed ({e}); scripts/install-test-deps installs it");
            None
        }
    }
}
