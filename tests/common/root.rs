//! Fixture roots for dances: a small Debian-like root built once per test
//! binary by `scripts/make-fixture-root` (bash, coreutils, their libraries),
//! copied per test with hard links for the big read-only part (`usr/`) and
//! real copies for everything a test may change. Plus a guard that
//! unmounts what a test mounted, even when the test fails.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The template root of this test process.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the dance tests need root (overlayfs, namespaces): run ./scripts/test as root"
        );
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixture-roots");
        fs::create_dir_all(&base).unwrap();
        // Templates of test processes that are gone.
        for e in fs::read_dir(&base).unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().parse::<u32>().unwrap_or(0);
            if pid != 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let dir = base.join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-fixture-root");
        let status = Command::new(script)
            .arg(&dir)
            .arg(env!("CARGO_BIN_EXE_disco"))
            .status()
            .unwrap();
        assert!(status.success(), "make-fixture-root failed");
        dir
    })
}

/// A fixture root of one test.
pub struct FixtureRoot {
    pub path: PathBuf,
}

impl FixtureRoot {
    /// A fresh root in `dir/root`.
    pub fn new(dir: &Path) -> FixtureRoot {
        let path = dir.join("root");
        fs::create_dir(&path).unwrap();
        // usr/ (binaries, libraries) is shared by hard links: no dance may
        // change a fixture root, and tests write only outside usr/.
        for e in fs::read_dir(template()).unwrap().flatten() {
            let link = e.file_name() == "usr";
            let status = Command::new("cp")
                .arg(if link { "-al" } else { "-a" })
                .arg(e.path())
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let t = fs::metadata(template()).unwrap();
        fs::set_permissions(&path, t.permissions()).unwrap();
        FixtureRoot { path }
    }

    /// Writes a file into the root (parents created), mode 0644.
    pub fn file(&self, rel: &str, content: &str) -> &Self {
        let p = self.path.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        self
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.path.join(rel)).ok()
    }
}

/// [`deep_snapshot`] without disco's state, logs and caches, and
/// without directory mtimes (adding and removing entries changes them).
pub fn pristine_view(root: &Path) -> Vec<String> {
    deep_snapshot(root)
        .into_iter()
        .filter(|l| {
            !["var/lib/disco", "var/log", "var/cache"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| {
            let mut parts: Vec<&str> = l.split(' ').collect();
            if parts.get(1).is_some_and(|m| m.starts_with("40")) {
                parts[3] = "-";
            }
            parts.join(" ")
        })
        .collect()
}

/// Every path below `root` with type, mode, owner, mtime, xattrs and
/// content, for "byte-identical" assertions.
pub fn deep_snapshot(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            // A state dir inside the root: its scratch image is disco's, not the root's.
            if e.file_name() == "scratch.img" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let mut xattrs: Vec<String> = xattr::list(&p)
                .map(|l| {
                    l.map(|n| {
                        format!(
                            "{}={:?}",
                            n.to_string_lossy(),
                            xattr::get(&p, &n).ok().flatten()
                        )
                    })
                    .collect()
                })
                .unwrap_or_default();
            xattrs.sort();
            let content = if m.is_file() {
                format!("{:x}", md5::Md5::digest(fs::read(&p).unwrap()))
            } else if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {}.{} [{}] {content}",
                p.strip_prefix(root).unwrap().display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec(),
                xattrs.join(",")
            ));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    use md5::Digest;
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Unmounts `path` (lazily) when dropped, so a failing test leaves nothing.
pub struct MountGuard(pub PathBuf);

impl MountGuard {
    /// Mounts a tmpfs at `path` (created if missing).
    pub fn tmpfs(path: &Path) -> MountGuard {
        fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("disco-test"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=755"),
        )
        .expect("mount tmpfs for the test");
        MountGuard(path.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The host's mount table lines that mention `needle`.
pub fn host_mounts_with(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// Path, type, mode, owner, xattrs and content of everything below
/// `root` ([`deep_snapshot`] without mtimes, which say when, not what):
/// what two runs of one dance must agree on.
pub fn snapshot_no_mtimes(root: &Path) -> Vec<String> {
    deep_snapshot(root)
        .into_iter()
        .map(|l| {
            let mut parts: Vec<&str> = l.split(' ').collect();
            parts[3] = "-";
            parts.join(" ")
        })
        .collect()
}
