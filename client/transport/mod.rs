//! Transports (DESIGN §4): where a server is (`ServerUri`), what a node is
//! allowed to see of it (the *view*: its parameter layers and the modules
//! of its plan), and the SSH pair — `disco serve` on the server, the
//! fetch client that speaks to it through the system `ssh`.
//!
//! The local transport (a plain directory) stays in [`crate::fetch`];
//! everything here is about the protocol ([`wire`]), the hash tree
//! ([`manifest`]), the server ([`serve`]), the client ([`ssh`]) and
//! `disco publish` ([`publish`]), with the candidate, pins and promotion
//! ([`candidate`]).

pub mod candidate;
pub mod deadline;
pub mod manifest;
pub mod publish;
pub mod serve;
pub mod ssh;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::names::Name;
use crate::plan;
use crate::tree::ServerTree;
use manifest::Manifest;
use wire::Entry;

/// Where a server lives, parsed from `--server` / `DISCO_SERVER` / config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerUri {
    /// A server tree on a local filesystem (embedded transport).
    Local(PathBuf),
    /// `ssh://[user@]host[:port]/path`.
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        path: String,
    },
}

impl ServerUri {
    pub fn parse(raw: &str) -> Result<ServerUri> {
        if raw.is_empty() {
            bail!("server is empty: give a directory path or ssh://[user@]host[:port]/path");
        }
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Ok(ServerUri::Local(PathBuf::from(raw)));
        };
        if scheme != "ssh" {
            bail!("server '{raw}': unknown scheme {scheme}://; use a directory path or ssh://[user@]host[:port]/path");
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => bail!("server '{raw}': no path; expected ssh://[user@]host[:port]/path"),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
                let port = p
                    .parse()
                    .with_context(|| format!("server '{raw}': bad port {p:?}"))?;
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    Some(port),
                )
            }
            _ => (
                hostport
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                None,
            ),
        };
        let bad = |s: &str| {
            s.is_empty()
                || s.starts_with('-')
                || s.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if bad(&host) || user.as_deref().is_some_and(bad) || path.chars().any(|c| c.is_control()) {
            bail!("server '{raw}': bad user, host or path");
        }
        Ok(ServerUri::Ssh {
            user,
            host,
            port,
            path: path.to_string(),
        })
    }
}

impl fmt::Display for ServerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerUri::Local(p) => write!(f, "{}", p.display()),
            ServerUri::Ssh {
                user,
                host,
                port,
                path,
            } => {
                write!(f, "ssh://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                write!(f, "{host}")?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                write!(f, "{path}")
            }
        }
    }
}

/// What one node may see of a server tree: a manifest and, for each of
/// its top directories (`parameters/L`, `modules/M`), the real directory.
#[derive(Debug, Clone)]
pub struct View {
    pub manifest: Manifest,
    pub dirs: BTreeMap<String, PathBuf>,
}

/// Name of the manifest `disco publish` stores in each snapshot.
pub const PUBLISHED_MANIFEST: &str = ".disco-manifest.json";

impl View {
    /// The view of `node` in the tree at `root`: its layers and the modules
    /// of its plan, hashed (or taken from the published manifest).
    pub fn of(root: &Path, node: &Name) -> Result<View> {
        View::of_cached(root, node, &mut manifest::HashCache::default())
    }

    /// [`View::of`], with file hashes from (and into) `hashes`.
    pub fn of_cached(root: &Path, node: &Name, hashes: &mut manifest::HashCache) -> Result<View> {
        let tree = ServerTree::open(root)?;
        let spec = tree.node(node)?;
        let plan = plan::plan(&tree, &spec)?;
        // Never through a symlink: a manifest is only trusted as a file of
        // the tree (publish writes it; what serve sends is opened beneath).
        let published: Option<Manifest> =
            crate::fsutil::read_small(&root.join(PUBLISHED_MANIFEST), PUBLISHED_MANIFEST, 1 << 30)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice(&b).ok());
        // A unit that is a symlink to another unit of a published
        // snapshot takes that unit's manifest: a snapshot is never hashed.
        let canonical_root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let published_as = |real: &Path| -> Option<String> {
            let p = published.as_ref()?;
            let rel = real.strip_prefix(&canonical_root).ok()?.to_str()?;
            p.dirs.contains_key(rel).then(|| rel.to_string())
        };
        let mut m = Manifest::default();
        let mut dirs = BTreeMap::new();
        let mut top = Vec::new();
        for (kind, names) in [
            ("parameters", spec.layers.iter().collect::<Vec<_>>()),
            ("modules", plan.order.iter().collect::<Vec<_>>()),
        ] {
            let mut entries = Vec::new();
            for n in names {
                let rel = format!("{kind}/{n}");
                let real = tree
                    .resolve_dir(&rel)?
                    .with_context(|| format!("{rel} vanished"))?;
                let is_link = fs::symlink_metadata(root.join(&rel))
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(true);
                let entry = match (&published, is_link) {
                    (Some(p), false) if p.dirs.contains_key(&rel) => {
                        m.graft(p, &rel);
                        p.entry(&rel)
                            .cloned()
                            .with_context(|| format!("{rel} missing in the published manifest"))?
                    }
                    (Some(p), true) => match published_as(&real) {
                        Some(from) => {
                            m.graft_as(p, &from, &rel);
                            p.entry(&from).cloned().with_context(|| {
                                format!("{from} missing in the published manifest")
                            })?
                        }
                        None => m.add_tree_cached(&real, &rel, n.as_str(), hashes)?,
                    },
                    _ => m.add_tree_cached(&real, &rel, n.as_str(), hashes)?,
                };
                entries.push(Entry {
                    name: n.to_string(),
                    ..entry
                });
                dirs.insert(rel, real);
            }
            top.push(m.set_dir(kind, kind, 0o755, entries));
        }
        m.set_dir("", "", 0o755, top);
        Ok(View { manifest: m, dirs })
    }

    /// The real directory and the path below it of a manifest path, if
    /// the path is a file of the view (open it with
    /// [`crate::fsutil::open_beneath`]: through no symlink).
    pub fn file<'a>(&'a self, path: &'a str) -> Option<(&'a Path, &'a str)> {
        let e = self.manifest.entry(path)?;
        if e.kind != 'f' {
            return None;
        }
        let mut parts = path.splitn(3, '/');
        let top = format!("{}/{}", parts.next()?, parts.next()?);
        let rest = parts.next()?;
        Some((self.dirs.get(&top)?.as_path(), rest))
    }
}

/// Copies `src` to `dst` (which must not exist): regular files with their
/// mode and mtime (hole-aware, never whole in memory), symlinks as
/// symlinks (never followed), directories recursively. Sockets, FIFOs and
/// devices are refused, and so is a file over `max_file` bytes.
///
/// `reuse` is an earlier copy of the same tree made by this function (the
/// last fetch's cache): a file whose size, mtime and mode equal its earlier
/// copy's is hard-linked from there instead of copied — rsync's quick
/// check; disco never changes its copies in place. What is written is made
/// durable by fsync of each copied file and each directory made, never by
/// a `syncfs` that would wait for everything else on the filesystem. The
/// fsyncs come last, in a batch: each file's writeback is started as soon
/// as it is written (`sync_file_range`), so by the first fsync the data is
/// on its way and one journal commit covers most of the files (git's
/// `core.fsyncMethod=batch` idea, with a real fsync per file kept).
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    label: &str,
    max_file: u64,
    reuse: Option<&Path>,
) -> Result<()> {
    let mut written = Written::default();
    copy_dir(src, dst, label, max_file, reuse, &mut written)?;
    for f in &written.files {
        fs::File::open(f)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync {}", f.display()))?;
    }
    for d in written.dirs.iter().rev() {
        crate::fsutil::fsync_dir(d)?;
    }
    Ok(())
}

/// What a copy wrote, to be made durable at its end.
#[derive(Default)]
struct Written {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    label: &str,
    max_file: u64,
    reuse: Option<&Path>,
    written: &mut Written,
) -> Result<()> {
    if label.matches('/').count() > crate::fsutil::MAX_DEPTH {
        bail!(
            "{label}: more than {} levels of directories",
            crate::fsutil::MAX_DEPTH
        );
    }
    let meta = fs::metadata(src).with_context(|| label.to_string())?;
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dst)
        .with_context(|| format!("cannot create {}", dst.display()))?;
    written.dirs.push(dst.to_path_buf());
    let mut entries: Vec<_> = fs::read_dir(src)
        .with_context(|| label.to_string())?
        .collect::<io::Result<_>>()
        .with_context(|| label.to_string())?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let shown = format!("{label}/{}", name.to_string_lossy());
        let from = entry.path();
        let to = dst.join(&name);
        let ft = entry.file_type().with_context(|| shown.clone())?;
        if ft.is_symlink() {
            let target = fs::read_link(&from).with_context(|| shown.clone())?;
            std::os::unix::fs::symlink(&target, &to)
                .with_context(|| format!("cannot create {}", to.display()))?;
        } else if ft.is_dir() {
            let old = reuse.map(|r| r.join(&name));
            copy_dir(&from, &to, &shown, max_file, old.as_deref(), written)?;
        } else if ft.is_file() {
            let old = reuse.map(|r| r.join(&name));
            if copy_file(&from, &to, &shown, max_file, old.as_deref())? {
                written.files.push(to);
            }
        } else {
            let meta = entry.metadata().with_context(|| shown.clone())?;
            bail!(
                "{shown} is a {}; a server tree may hold only regular files, directories and symlinks",
                crate::fsutil::kind_name(&meta)
            );
        }
    }
    fs::set_permissions(dst, meta.permissions())
        .with_context(|| format!("cannot set mode of {}", dst.display()))
}

/// Copies one regular file of a server tree (not through a symlink),
/// with its permission bits and mtime, holes kept, its writeback started
/// (true: the caller fsyncs it) — or links `reuse` when that is an
/// unchanged earlier copy of it (false).
fn copy_file(
    from: &Path,
    to: &Path,
    shown: &str,
    max_file: u64,
    reuse: Option<&Path>,
) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::OpenOptionsExt;
    let src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
        .with_context(|| format!("cannot read {shown}"))?;
    let meta = src.metadata()?;
    if !meta.is_file() {
        bail!("{shown} is not a regular file");
    }
    if meta.len() > max_file {
        bail!(
            "{shown} is {}, over max_file_size ({}); refused",
            crate::fsutil::human_bytes(meta.len()),
            crate::fsutil::human_bytes(max_file)
        );
    }
    if let Some(old) = reuse {
        let same = fs::symlink_metadata(old).is_ok_and(|o| {
            o.is_file()
                && o.len() == meta.len()
                && (o.mtime(), o.mtime_nsec()) == (meta.mtime(), meta.mtime_nsec())
                && o.mode() & 0o7777 == meta.mode() & 0o7777
        });
        // A failed link (another filesystem, too many links) is a copy.
        if same && fs::hard_link(old, to).is_ok() {
            return Ok(false);
        }
    }
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("cannot create {}", to.display()))?;
    crate::fsutil::copy_sparse(&src, &dst, meta.len())
        .with_context(|| format!("cannot copy {shown}"))?;
    dst.set_permissions(meta.permissions())?;
    dst.set_modified(meta.modified()?)
        .with_context(|| format!("cannot write {}", to.display()))?;
    // SAFETY: a valid descriptor; only starts the writeback of its pages.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::sync_file_range(dst.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        assert_eq!(
            ServerUri::parse("/srv/disco").unwrap(),
            ServerUri::Local("/srv/disco".into())
        );
        let u = ServerUri::parse("ssh://disco@example.org:2222/srv/disco").unwrap();
        assert_eq!(
            u,
            ServerUri::Ssh {
                user: Some("disco".into()),
                host: "example.org".into(),
                port: Some(2222),
                path: "/srv/disco".into()
            }
        );
        assert_eq!(u.to_string(), "ssh://disco@example.org:2222/srv/disco");
        assert!(ServerUri::parse("ssh://host").is_err());
        assert!(ServerUri::parse("ssh://-oProxyCommand=x/srv").is_err());
        assert!(ServerUri::parse("ftp://x/y").is_err());
        assert!(ServerUri::parse("ssh://h:notaport/x").is_err());
    }
}
