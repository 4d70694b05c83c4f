//! Directories of ROOT opened without following any symlink, for the
//! merge and `disco undo`: between a dance and its undo, ROOT may have
//! changed (`/opt/app` turned into a symlink to a host directory), and
//! neither may then write or delete through it.
//!
//! An [`Anchor`] is an `O_PATH` descriptor opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from ROOT; paths of
//! entries are then named through it (`/proc/self/fd/N/NAME`), so every
//! ordinary path call resolves the directory that was checked, and only
//! the last component by name — which `rename`, `unlink` and `lstat`
//! never follow.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;

/// A directory of ROOT, resolved without symlinks.
#[derive(Debug)]
pub struct Anchor {
    fd: OwnedFd,
}

impl Anchor {
    /// Opens `root/rel` (`rel` relative, or absolute meaning under ROOT)
    /// as a directory: `ELOOP` when a component of `rel` is a symlink,
    /// `ENOTDIR` when one is not a directory, `EXDEV` when `..` would
    /// leave ROOT.
    pub fn open(root: &Path, rel: &Path) -> io::Result<Anchor> {
        let root_fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: open returned a new descriptor that nothing else owns.
        let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
        let rel: PathBuf = rel
            .components()
            .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
            .collect();
        let rel = if rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            rel
        };
        let path = std::ffi::CString::new(rel.into_os_string().into_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: open_how is plain data, zeroed then filled.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // An EAGAIN (a rename racing the lookup) is tried again there.
        let fd = crate::fsutil::sys_openat2(root_fd.as_raw_fd(), &path, &how);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = fd as std::os::fd::RawFd;
        // SAFETY: as above.
        Ok(Anchor {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The parent directory of `path` (absolute on ROOT) and its last
    /// component; `None` for ROOT itself.
    pub fn parent_of<'p>(root: &Path, path: &'p Path) -> Option<(io::Result<Anchor>, &'p OsStr)> {
        let name = path.file_name()?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        Some((Anchor::open(root, parent), name))
    }

    /// The directory itself, as a path any call can take.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Entry `name` of the directory.
    pub fn join(&self, name: &OsStr) -> PathBuf {
        self.path().join(name)
    }
}

/// Why an anchor could not be opened, in words.
pub fn why(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ELOOP) => "a symbolic link is on its way now",
        Some(libc::ENOTDIR) => "something on its way is no longer a directory",
        Some(libc::ENOENT) => "a directory on its way is gone",
        Some(libc::EXDEV) => "it leads outside the root",
        _ => "it cannot be opened",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn symlinks_on_the_way_are_refused_and_entries_are_named_through_the_anchor() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("opt/app")).unwrap();
        fs::create_dir_all(d.path().join("host")).unwrap();
        fs::write(d.path().join("host/conf"), "host's").unwrap();
        std::os::unix::fs::symlink(d.path().join("host"), root.join("opt/link")).unwrap();
        let a = Anchor::open(&root, Path::new("/opt/app")).unwrap();
        fs::write(a.join(OsStr::new("conf")), "x").unwrap();
        assert_eq!(fs::read_to_string(root.join("opt/app/conf")).unwrap(), "x");
        let e = Anchor::open(&root, Path::new("/opt/link")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert_eq!(why(&e), "a symbolic link is on its way now");
        let e = Anchor::open(&root, Path::new("../host")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
        assert!(Anchor::open(&root, Path::new("/")).is_ok());
    }
}
