//! A real Debian 12 root made with `debootstrap --variant=minbase`, built
//! once (cached under `target/debian-bookworm`, shared by every test
//! binary through a lock) and copied per test, with fresh apt package
//! lists (`apt-get update` once, so `apt-get -s` works offline). When the
//! Debian mirror cannot be reached the root cannot be made: [`root`] says
//! so in one line and the caller skips.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh copy of the Debian root in `dir/debian`, or `None` (said on
/// stderr) when it cannot be made here.
pub fn root(dir: &Path) -> Option<PathBuf> {
    let base = cache_dir("debian-bookworm");
    let (template, lock) = cached(&base, &[], |_| {})?;
    // Under the lock: one `apt-get update` for every test binary.
    let updated = update_lists(&base, &template);
    drop(lock);
    updated.then(|| copy(&template, &dir.join("debian")))
}

/// `target/NAME`: where a cached root and its lock live.
pub fn cache_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join(name)
}

/// A copy (`cp -a`) of `template` at `to`.
pub fn copy(template: &Path, to: &Path) -> PathBuf {
    let st = Command::new("cp")
        .arg("-a")
        .arg(template)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "cannot copy {}", template.display());
    to.to_path_buf()
}

/// `BASE/root`: a `debootstrap --variant=minbase [EXTRA…] bookworm` root,
/// made once for every test binary (the first to take `BASE/lock` builds
/// it in `BASE/building`, runs `prepare` on it, renames it in place), or
/// `None` said in one `skipped:` line. Returned with the lock, held for
/// as long as the caller keeps it.
pub fn cached(
    base: &Path,
    extra: &[&str],
    prepare: impl FnOnce(&Path),
) -> Option<(PathBuf, fs::File)> {
    let done = base.join("root");
    fs::create_dir_all(base).unwrap();
    let lock = fs::File::create(base.join("lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if done.join("etc/debian_version").is_file() {
        return Some((done, lock));
    }
    let tmp = base.join("building");
    let _ = fs::remove_dir_all(&tmp);
    let out = Command::new("debootstrap")
        .arg("--variant=minbase")
        .args(extra)
        .arg("bookworm")
        .arg(&tmp)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            prepare(&tmp);
            fs::rename(&tmp, &done).unwrap();
            Some((done, lock))
        }
        Ok(o) => {
            let _ = fs::remove_dir_all(&tmp);
            eprintln!(
                "skipped: debootstrap --variant=minbase {} bookworm failed (is the Debian mirror reachable?): {}",
                extra.join(" "),
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

/// Once per template (marked by `lists-updated` beside it, under the
/// caller's lock): `apt-get update` in a chroot of `root`, the host's
/// resolv.conf lent when the root has none. False (said in one line) when
/// the root has no package lists at all; a failed update that leaves the
/// lists debootstrap fetched is said and the template kept.
fn update_lists(base: &Path, root: &Path) -> bool {
    let marker = base.join("lists-updated");
    if marker.is_file() {
        return true;
    }
    let resolv = root.join("etc/resolv.conf");
    let lent =
        fs::symlink_metadata(&resolv).is_err() && fs::copy("/etc/resolv.conf", &resolv).is_ok();
    let out = Command::new("chroot")
        .arg(root)
        .args(["apt-get", "-q"])
        .args(["-o", "Acquire::Languages=none"])
        .args(["-o", "Acquire::Retries=0"])
        .args(["-o", "Acquire::http::Timeout=20"])
        .args(["-o", "Dir::Cache::pkgcache="])
        .args(["-o", "Dir::Cache::srcpkgcache="])
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output();
    if lent {
        let _ = fs::remove_file(&resolv);
    }
    let why = match out {
        // apt-get update exits 0 on some failed fetches, and says `Err:`.
        Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("Err:") => {
            fs::write(&marker, "").unwrap();
            return true;
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .chain(String::from_utf8_lossy(&o.stdout).lines())
            .find(|l| l.starts_with("E:") || l.starts_with("Err:"))
            .unwrap_or("")
            .to_string(),
        Err(e) => format!("chroot: {e}"),
    };
    let has_lists = fs::read_dir(root.join("var/lib/apt/lists"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
        .unwrap_or(false);
    if has_lists {
        eprintln!("warning: apt-get update of the Debian root failed (is the Debian mirror reachable?), keeping its old package lists: {why}");
    } else {
        eprintln!("skipped: the Debian root has no package lists and apt-get update failed (is the Debian mirror reachable?): {why}");
    }
    has_lists
}

/// True when the Debian mirror answers (a live install downloads).
pub fn mirror_reachable() -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = ("deb.debian.org", 80).to_socket_addrs() else {
        return false;
    };
    addrs.into_iter().any(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)).is_ok()
    })
}
