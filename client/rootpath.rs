//! Resolving a path inside a root directory the way the sandbox will see
//! it: symlinks followed within the root (absolute targets are relative to
//! the root), and `..` never allowed to climb above it.
//!
//! Used on the host side (shims: where does `/sbin/service` really live in
//! ROOT?) and inside the sandbox (is a module's target path inside ROOT?).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a path cannot be resolved inside the root.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("/{path} leads outside the root (through '..' or the symlink /{via})")]
    Escapes { path: String, via: String },
    #[error("/{path}: too many levels of symlinks")]
    Loop { path: String },
    #[error("/{path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Resolves `rel` (relative to `root`) to the real path relative to
/// `root`. Every component but the last is followed if it is a symlink;
/// the last too when `follow_last`. Components that do not exist are kept
/// as they are (the path may be about to be created).
pub fn resolve(root: &Path, rel: &Path, follow_last: bool) -> Result<PathBuf, ResolveError> {
    let shown = rel.display().to_string();
    let mut done: Vec<OsString> = Vec::new();
    let mut todo: Vec<OsString> = components(rel).into_iter().rev().collect();
    let mut hops = 0;
    let mut via = String::new();
    while let Some(c) = todo.pop() {
        if c == ".." {
            if done.pop().is_none() {
                return Err(ResolveError::Escapes { path: shown, via });
            }
            continue;
        }
        done.push(c);
        let last = todo.is_empty();
        if last && !follow_last {
            break;
        }
        let here: PathBuf = done.iter().collect();
        let meta = match fs::symlink_metadata(root.join(&here)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
            Err(source) => {
                return Err(ResolveError::Io {
                    path: shown,
                    source,
                })
            }
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        hops += 1;
        if hops > 40 {
            return Err(ResolveError::Loop { path: shown });
        }
        let target = fs::read_link(root.join(&here)).map_err(|source| ResolveError::Io {
            path: shown.clone(),
            source,
        })?;
        via = here.display().to_string();
        done.pop();
        if target.is_absolute() {
            done.clear();
        }
        todo.extend(components(&target).into_iter().rev());
    }
    Ok(done.iter().collect())
}

/// The normal and `..` components of a path (root and `.` dropped).
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_links_inside_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        symlink("usr/sbin", r.join("sbin")).unwrap();
        symlink("/usr/sbin", r.join("etc/abs")).unwrap();
        symlink("../../../../outside", r.join("etc/evil")).unwrap();
        assert_eq!(
            resolve(r, Path::new("sbin/service"), true).unwrap(),
            PathBuf::from("usr/sbin/service")
        );
        assert_eq!(
            resolve(r, Path::new("etc/abs/x"), true).unwrap(),
            PathBuf::from("usr/sbin/x")
        );
        assert_eq!(
            resolve(r, Path::new("etc/new/dir/file"), true).unwrap(),
            PathBuf::from("etc/new/dir/file")
        );
        assert_eq!(
            resolve(r, Path::new("sbin"), false).unwrap(),
            PathBuf::from("sbin")
        );
        let err = resolve(r, Path::new("etc/evil/passwd"), true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/evil/passwd leads outside the root (through '..' or the symlink /etc/evil)"
        );
        assert!(resolve(r, Path::new("../x"), true).is_err());
    }

    #[test]
    fn symlink_loops_end() {
        let d = tempfile::tempdir().unwrap();
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        assert!(matches!(
            resolve(d.path(), Path::new("a/x"), true),
            Err(ResolveError::Loop { .. })
        ));
    }
}
