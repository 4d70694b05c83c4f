//! Small filesystem facts shared by the stages that read overlay layers
//! and trees (diff, merge, the transport manifest): what an overlayfs
//! upper entry is (whiteout, opaque directory), a file's user-visible
//! extended attributes, its md5, byte equality of two files.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use md5::{Digest, Md5};

/// An overlayfs whiteout: a character device 0/0 that hides a lower entry.
pub fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// An overlayfs opaque directory: nothing below it shows through.
pub fn is_opaque(dir: &Path) -> bool {
    matches!(xattr::get(dir, "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y")
}

/// Extended attributes other than overlayfs' own, sorted.
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("trusted.overlay."))
        .filter_map(|n| xattr::get(path, &n).ok().flatten().map(|v| (n, v)))
        .collect();
    out.sort();
    out
}

/// The md5 of a file's content, as lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Md5::new();
    // Sized to the file (a zeroed 256 KiB per small file is most of the
    // cost of hashing it: a memset and its page faults).
    let mut buf = vec![0u8; buf_for(f.metadata().map_or(u64::MAX, |m| m.len()), 256 << 10)];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// A read buffer's size for a file of `len` bytes: one more than the
/// file (so the read that finds its end needs no second buffer), at most
/// `max`.
fn buf_for(len: u64, max: usize) -> usize {
    usize::try_from(len).map_or(max, |l| l.saturating_add(1).min(max))
}

/// True when two files of the given lengths have the same bytes.
pub fn same_bytes(a: &Path, b: &Path, alen: u64, blen: u64) -> Result<bool> {
    if alen != blen {
        return Ok(false);
    }
    // Never through a symlink, never blocking on a FIFO: both sides may
    // be a module's output or ROOT.
    let open = |p: &Path| {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(p)
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    if !fa.metadata()?.is_file() || !fb.metadata()?.is_file() {
        return Ok(false);
    }
    let size = buf_for(alen, 64 << 10);
    let (mut ba, mut bb) = (vec![0u8; size], vec![0u8; size]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// The file capabilities of `path` (`security.capability`) as `getcap`
/// prints them: `cap_net_bind_service=ep`, caps with the same flags
/// joined by commas.
pub fn file_caps(path: &Path) -> Option<String> {
    let raw = xattr::get(path, "security.capability").ok().flatten()?;
    let word = |i: usize| -> Option<u32> {
        raw.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let magic = word(0)?;
    let effective = magic & 1 != 0;
    let pairs = match magic & 0xff00_0000 {
        0x0100_0000 => 1,
        0x0200_0000 | 0x0300_0000 => 2,
        _ => return Some(format!("unknown format {magic:#x}")),
    };
    let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for pair in 0..pairs {
        let (perm, inh) = (word(1 + pair * 2)?, word(2 + pair * 2)?);
        for bit in 0..32 {
            let (p, i) = (perm >> bit & 1 != 0, inh >> bit & 1 != 0);
            if !p && !i {
                continue;
            }
            let index = (pair * 32 + bit) as u8;
            let name = caps::all()
                .into_iter()
                .find(|c| c.index() == index)
                .map(|c| c.to_string().to_lowercase())
                .unwrap_or_else(|| format!("cap_{index}"));
            let mut flags = String::new();
            if effective && p {
                flags.push('e');
            }
            if i {
                flags.push('i');
            }
            if p {
                flags.push('p');
            }
            groups.entry(flags).or_default().push(name);
        }
    }
    let mut out: Vec<String> = groups
        .into_iter()
        .map(|(flags, mut names)| {
            names.sort();
            format!("{}={flags}", names.join(","))
        })
        .collect();
    out.sort();
    Some(out.join(" "))
}

/// Copies bytes `start..end` of `from` to the same offsets of `to`: with
/// `sendfile` (no copy through user space), else `pread`/`pwrite`.
fn copy_range(
    from: &fs::File,
    to: &fs::File,
    start: i64,
    end: i64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let mut off = start;
    // SAFETY: lseek on a descriptor we own.
    let mut sendfile_ok = unsafe { libc::lseek(to.as_raw_fd(), start, libc::SEEK_SET) } == start;
    while off < end {
        let want = ((end - off) as usize).min(1 << 30);
        if sendfile_ok {
            let mut o = off as libc::off_t;
            // SAFETY: valid descriptors and offset pointer.
            let n = unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), &mut o, want) };
            if n > 0 {
                off += n as i64;
                continue;
            }
            if n == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ENOSYS) => sendfile_ok = false,
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if buf.is_empty() {
            // Only where sendfile cannot: most copies never need it.
            buf.resize(1 << 20, 0);
        }
        let chunk = want.min(buf.len());
        let n = from.read_at(&mut buf[..chunk], off as u64)?;
        if n == 0 {
            break;
        }
        to.write_all_at(&buf[..n], off as u64)?;
        off += n as i64;
    }
    Ok(())
}

/// Copies the data regions of `from` (found with `SEEK_DATA`/`SEEK_HOLE`)
/// into the same offsets of `to`, which ends `len` long: holes stay holes.
pub fn copy_sparse(from: &fs::File, to: &fs::File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ifd = from.as_raw_fd();
    let mut pos: i64 = 0;
    let mut buf = Vec::new();
    while (pos as u64) < len {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(ifd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(ifd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        copy_range(from, to, data, end, &mut buf)?;
        pos = end;
    }
    to.set_len(len)
}

/// How deep disco walks a tree (module files, parameters, server trees):
/// deeper is refused, naming the path, so no walk can take unbounded
/// time or stack.
pub const MAX_DEPTH: usize = 256;

/// Reads a small regular file of a tree as untrusted input: never through
/// a symlink (`O_NOFOLLOW`), never blocking on a FIFO (`O_NONBLOCK`),
/// only a regular file of at most `cap` bytes. `Ok(None)` when absent;
/// otherwise one error naming `shown`.
pub fn read_small(path: &Path, shown: &str, cap: u64) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            anyhow::bail!("{shown} is a symbolic link; it must be a regular file")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {shown}")),
    };
    read_capped(f, shown, cap).map(Some)
}

/// How many times an `openat2` that the kernel answered `EAGAIN` is
/// tried again.
const OPENAT2_TRIES: usize = 64;

/// `openat2(dirfd, path, how)`: the descriptor, or -1 with `errno` set.
/// `EAGAIN` — with `RESOLVE_IN_ROOT` or `RESOLVE_BENEATH`, a rename
/// anywhere on the system during a lookup through `..` (Debian's
/// `/etc/os-release -> ../usr/lib/os-release` has one) — is tried again,
/// as openat2(2) advises: it failed 5 dances in 100 beside a rename loop.
pub fn sys_openat2(dirfd: std::os::fd::RawFd, path: &std::ffi::CStr, how: &libc::open_how) -> i64 {
    let mut fd = -1;
    for _ in 0..OPENAT2_TRIES {
        // SAFETY: a descriptor of the caller's, a NUL-terminated path and
        // a pointer to a live open_how of the size given.
        fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
            break;
        }
    }
    fd
}

/// Reads file `rel` of the tree at `root` as untrusted input, the way a
/// process chrooted there would find it: `openat2` with
/// `RESOLVE_IN_ROOT` (an absolute symlink or `..` stays inside `root`)
/// and `RESOLVE_NO_MAGICLINKS` (no `/proc/…/fd` jumps out), never
/// blocking on a FIFO (`O_NONBLOCK`), only a regular file of at most
/// `cap` bytes. `Ok(None)` when absent; otherwise one error naming
/// `shown`. Where the kernel has no `openat2`, the path is resolved
/// inside `root` by [`crate::rootpath::resolve`] and opened with
/// `O_NOFOLLOW`.
pub fn read_in_root(root: &Path, rel: &Path, shown: &str, cap: u64) -> Result<Option<Vec<u8>>> {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let dir = fs::File::open(root).with_context(|| format!("cannot open {}", root.display()))?;
    let rel_bytes = rel.as_os_str().as_bytes();
    let rel_c = CString::new(rel_bytes.strip_prefix(b"/").unwrap_or(rel_bytes))
        .with_context(|| format!("{shown}: a NUL in the path"))?;
    // SAFETY: open_how is plain data, zeroed then filled.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    use std::os::fd::AsRawFd;
    let fd = sys_openat2(dir.as_raw_fd(), &rel_c, &how);
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
            Some(libc::ENOSYS) | Some(libc::EPERM) => {
                let real = crate::rootpath::resolve(root, rel, true)
                    .with_context(|| format!("cannot read {shown}"))?;
                read_small(&root.join(real), shown, cap)
            }
            Some(libc::ELOOP) => {
                anyhow::bail!("cannot read {shown}: too many levels of symbolic links")
            }
            Some(libc::EXDEV) => {
                anyhow::bail!("cannot read {shown}: it leads through a magic link")
            }
            _ => Err(e).with_context(|| format!("cannot read {shown}")),
        };
    }
    // SAFETY: a descriptor openat2 just returned, owned by nobody else.
    let f = unsafe { fs::File::from_raw_fd(fd as i32) };
    read_capped(f, shown, cap).map(Some)
}

/// Opens file `rel` below directory `dir` for reading through no symlink
/// at all (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, never
/// blocking on a FIFO): a symlinked directory on the way is refused
/// (`ELOOP`), whatever a listing claimed. Where the kernel has no
/// `openat2`, each directory on the way is checked not to be a symlink
/// and the file is opened with `O_NOFOLLOW`.
pub fn open_beneath(dir: &Path, rel: &str) -> io::Result<fs::File> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::fs::OpenOptionsExt;
    let base = fs::File::open(dir)?;
    let c = CString::new(rel).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain data, zeroed then filled.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let fd = sys_openat2(base.as_raw_fd(), &c, &how);
    if fd >= 0 {
        // SAFETY: a descriptor openat2 just returned, owned by nobody else.
        return Ok(unsafe { fs::File::from_raw_fd(fd as i32) });
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) {
        return Err(e);
    }
    let mut at = dir.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        at.push(p);
        if fs::symlink_metadata(&at)?.file_type().is_symlink() {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
    }
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(rel))
}

/// The bytes of open file `f` when it is a regular file of at most `cap`
/// bytes; otherwise one error naming `shown` (and the cap).
pub fn read_capped(f: fs::File, shown: &str, cap: u64) -> Result<Vec<u8>> {
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {shown}"))?;
    if !meta.is_file() {
        anyhow::bail!(
            "{shown} is a {}; it must be a regular file",
            crate::fsutil::kind_name(&meta)
        );
    }
    if meta.len() > cap {
        anyhow::bail!(
            "{shown} is {}, more than the {} it may hold",
            human_bytes(meta.len()),
            human_bytes(cap)
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {shown}"))?;
    if bytes.len() as u64 > cap {
        anyhow::bail!("{shown} grew past {} while it was read", human_bytes(cap));
    }
    Ok(bytes)
}

/// True when `path` is a real directory, false when it is absent; an
/// error naming `shown` when it is a symlink or anything else — a
/// directory disco walks is never followed elsewhere.
pub fn real_dir(path: &Path, shown: &str) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(m) => anyhow::bail!(
            "{shown} is a {}; it must be a directory",
            crate::fsutil::kind_name(&m)
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {shown}")),
    }
}

/// Writes `data` at `offset` of `f`, leaving 4 KiB blocks of zeros as
/// holes (the file is extended to its size by the caller's `set_len`).
pub fn write_sparse(f: &fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 4096;
    let mut i = 0;
    while i < data.len() {
        // Block boundaries of the file, so holes line up with its blocks.
        let end = (((offset as usize + i) / BLOCK + 1) * BLOCK - offset as usize).min(data.len());
        let chunk = &data[i..end];
        if chunk.iter().any(|b| *b != 0) {
            f.write_all_at(chunk, offset + i as u64)?;
        }
        i = end;
    }
    Ok(())
}

/// A byte count for people: `512 B`, `1.5 KiB`, `17.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A human name for a file type.
pub fn kind_name(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_file() {
        "regular file"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// A path as one printable line, losslessly: bytes that are not UTF-8
/// and control characters as `\xNN`, a backslash as `\\`. Reports and
/// messages show every file name a Linux filesystem allows this way.
pub fn shown(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Serde for paths as they are on disk: a JSON string when the path is
/// UTF-8, else its bytes as an array of numbers. Journals use it, so any
/// name a Linux filesystem allows survives a crash and an undo.
pub mod path_bytes {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        match p.to_str() {
            Some(t) => s.serialize_str(t),
            None => s.collect_seq(p.as_os_str().as_bytes()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(t) => PathBuf::from(t),
            Repr::Bytes(b) => PathBuf::from(std::ffi::OsString::from_vec(b)),
        })
    }
}

/// Makes `dir`'s entries durable (fsync of the directory itself).
pub fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Makes the tree at `dir` (if there is one) its owner's only: files
/// 0600, directories 0700; symlinks are left alone, never followed.
pub fn private_tree(dir: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return Ok(());
    };
    let mode = if meta.is_dir() {
        0o700
    } else if meta.is_file() {
        0o600
    } else {
        return Ok(());
    };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    if meta.is_dir() {
        let entries =
            fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
            private_tree(&e.path())?;
        }
    }
    Ok(())
}

/// Writes `data` to `path` readable by its owner only (0600), atomically:
/// a hidden temporary file beside it, then a rename.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    write_via_temp(path, data, 0o600, false)
}

/// Writes `data` to `path` with `mode`, atomically and durably: a hidden
/// temporary file beside it (its own name: two writers never mix), synced,
/// then renamed over `path`; nothing half-written is ever seen there.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_via_temp(path, data, mode, true)
}

/// The work of [`write_private`] and [`write_atomic`].
fn write_via_temp(path: &Path, data: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            if sync {
                f.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| {
            if !sync {
                return Ok(());
            }
            // The rename itself lasts only once the directory does.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            fs::File::open(dir.unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn file_capabilities_read_as_getcap_prints_them() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ping");
        fs::write(&f, "").unwrap();
        // VFS_CAP_REVISION_2 | effective; permitted = NET_BIND_SERVICE (10) + NET_RAW (13).
        let mut v = (0x0200_0001u32).to_le_bytes().to_vec();
        for w in [(1u32 << 10) | (1 << 13), 0, 0, 0] {
            v.extend(w.to_le_bytes());
        }
        xattr::set(&f, "security.capability", &v).unwrap();
        assert_eq!(
            file_caps(&f).as_deref(),
            Some("cap_net_bind_service,cap_net_raw=ep")
        );
        assert_eq!(file_caps(d.path()), None);
    }

    #[test]
    fn a_root_file_is_read_inside_the_root_and_only_when_regular_and_small() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        fs::write(r.join("usr/lib/os-release"), "ID=inside\n").unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", r.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", r.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/hostname", r.join("etc/magic")).unwrap();
        let c = std::ffi::CString::new(r.join("etc/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let read = |rel: &str, cap| read_in_root(r, Path::new(rel), rel, cap);
        assert_eq!(
            read("etc/os-release", 100).unwrap().unwrap(),
            b"ID=inside\n"
        );
        // `..` stops at the root: ROOT/etc/hostname, which is absent.
        assert!(read("etc/up", 100).unwrap().is_none());
        // An absolute link through /proc is ROOT's /proc too: never the host's.
        assert!(read("etc/magic", 100).unwrap().is_none());
        assert_eq!(
            read("etc/fifo", 100).unwrap_err().to_string(),
            "etc/fifo is a fifo; it must be a regular file"
        );
        assert_eq!(
            read("etc/os-release", 4).unwrap_err().to_string(),
            "etc/os-release is 10 B, more than the 4 B it may hold"
        );
        assert!(read("etc/none", 4).unwrap().is_none());
    }

    #[test]
    fn any_name_is_shown_on_one_line_and_kept_by_the_journal() {
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/srv/caf\xe9/a\nb\\c"));
        assert_eq!(shown(p), "/srv/caf\\xe9/a\\x0ab\\\\c");
        #[derive(serde::Serialize, serde::Deserialize)]
        struct J {
            #[serde(with = "path_bytes")]
            p: std::path::PathBuf,
        }
        let text = serde_json::to_string(&J { p: p.into() }).unwrap();
        let back: J = serde_json::from_str(&text).unwrap();
        assert_eq!(back.p, p);
        let plain = serde_json::to_string(&J { p: "/etc/x".into() }).unwrap();
        assert_eq!(plain, r#"{"p":"/etc/x"}"#);
    }
}
