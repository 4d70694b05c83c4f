//! The mounts of a sandbox: which filesystems below ROOT get an overlay
//! (from `/proc/self/mountinfo`), and the ordered list of mount operations
//! that builds the sandbox's root for one layer.
//!
//! The list is plain data ([`MountOp`]) produced by pure functions, so the
//! plan is unit-tested without root; [`apply`] performs one operation with
//! nix and turns a failure into a [`SandboxError`] naming target, source,
//! type and errno.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::run::{Mount, RunDir};

/// A sandbox operation that failed, as one line a sysadmin can act on.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot mount {fstype} {from} on {target}{hint}: {errno}", errno = .errno.desc(), target = .target.display())]
    Mount {
        target: PathBuf,
        from: String,
        fstype: String,
        errno: Errno,
        hint: &'static str,
    },
    #[error("cannot prepare {}: {source}", .path.display())]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {errno}", errno = .errno.desc())]
    Sys { what: String, errno: Errno },
}

/// Filesystem types that are not data: never overlaid, never merged.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "fusectl",
    "configfs",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "rpc_pipefs",
    "nsfs",
    "overlay",
    "selinuxfs",
    "ramfs",
];

/// Directories the sandbox replaces with its own mounts; nothing below
/// them is overlaid.
pub const SANDBOX_DIRS: &[&str] = &["proc", "sys", "dev", "tmp", "run"];

/// One line of `/proc/self/mountinfo`: mount point and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Parses `/proc/self/mountinfo` text (mount points un-escaped).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountInfo {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystems to overlay for `root` (canonical): ROOT first, then
/// every real filesystem mounted strictly below it, parents before
/// children, skipping pseudo filesystems, anything under the sandbox's own
/// directories, and mounts hidden below another mount at the same place.
pub fn overlay_mounts(root: &Path, mountinfo: &[MountInfo]) -> Vec<Mount> {
    let mut out = vec![Mount {
        rel: PathBuf::new(),
        fstype: mountinfo
            .iter()
            .rev()
            .find(|m| m.mount_point == root)
            .map(|m| m.fstype.clone())
            .unwrap_or_default(),
    }];
    let mut below: Vec<(PathBuf, String)> = Vec::new();
    for m in mountinfo {
        let Ok(rel) = m.mount_point.strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let top = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        if top.is_some_and(|t| SANDBOX_DIRS.contains(&t.as_str())) {
            continue;
        }
        // A later mount on the same point hides the earlier one.
        below.retain(|(r, _)| r != rel);
        below.push((rel.to_path_buf(), m.fstype.clone()));
    }
    below.retain(|(_, fstype)| !PSEUDO_FS.contains(&fstype.as_str()));
    below.sort_by(|a, b| {
        a.0.components()
            .count()
            .cmp(&b.0.components().count())
            .then(a.0.cmp(&b.0))
    });
    out.extend(below.into_iter().map(|(rel, fstype)| Mount { rel, fstype }));
    out
}

/// One step of building a sandbox root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// overlayfs with `lowers` (top first), paths relative to the run dir
    /// or absolute.
    Overlay {
        target: PathBuf,
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    Tmpfs {
        target: PathBuf,
        options: String,
    },
    /// The sandbox's `/dev`: a small tmpfs where device nodes work.
    DevTmpfs {
        target: PathBuf,
    },
    /// An empty read-only tmpfs over a directory: it shows nothing and
    /// takes nothing (`/proc/irq`, the state dir inside ROOT).
    MaskDir {
        target: PathBuf,
    },
    /// `/dev/null` bound read-only and `nodev` over a file: it cannot be
    /// opened (`/proc/sysrq-trigger`, `/proc/kcore`).
    MaskFile {
        target: PathBuf,
        null: PathBuf,
    },
    /// A character device node, mode 0666.
    CharDevice {
        path: PathBuf,
        major: u64,
        minor: u64,
    },
    Proc {
        target: PathBuf,
    },
    SysfsReadonly {
        target: PathBuf,
    },
    Devpts {
        target: PathBuf,
    },
    /// Bind `source` on `target` (created as a file or dir to match), then
    /// optionally remount it read-only.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    /// Bind a path onto itself read-only (`/proc/sys`).
    ReadonlyInPlace {
        target: PathBuf,
    },
    Mkdir {
        path: PathBuf,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
}

/// What one sandbox needs to be built.
#[derive(Debug, Clone)]
pub struct RootPlan<'a> {
    pub root: &'a Path,
    pub mounts: &'a [Mount],
    /// Layer being run (1-based).
    pub layer: usize,
    /// The squashes (`q/J-K`) holding the first layers of its requires
    /// closure folded, topmost first: the lowest of its lower layers
    /// above the shims.
    pub squashes: &'a [usize],
    /// The rest of its closure's layers, ascending, stacked above that
    /// (the last one topmost).
    pub stacked: &'a [usize],
    /// Mount indexes that have a shim layer.
    pub shims: &'a [bool],
    pub merged: &'a Path,
    /// A directory of ROOT to hide (the state dir, when inside ROOT).
    pub hidden: Option<&'a Path>,
}

/// Entries of `/proc` that are the machine's, not the sandbox's: bound
/// read-only over themselves (ReadonlyInPlace) or masked.
const PROC_READONLY: &[&str] = &["sys", "bus", "fs", "pressure"];
const PROC_MASKED_DIRS: &[&str] = &["irq", "acpi", "scsi", "asound"];
const PROC_MASKED_FILES: &[&str] = &[
    "sysrq-trigger",
    "kcore",
    "keys",
    "key-users",
    "kmsg",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "mtrr",
    // The kernel's layout and build: addresses, slab caches, config.
    "kallsyms",
    "vmallocinfo",
    "slabinfo",
    "config.gz",
];

/// Entries of `/sys` that are the machine's and tell an attacker about
/// it (firmware tables, the crash kernel's layout, debugfs and LSM mount
/// points): masked like `/proc`'s, when they exist.
const SYS_MASKED_DIRS: &[&str] = &["firmware", "kernel/debug", "kernel/security"];
const SYS_MASKED_FILES: &[&str] = &["kernel/vmcoreinfo"];

/// The sandbox's tmpfs are memory (the host's `Shmem`, not the
/// scratch): each has a fixed size and inode count, so a module that
/// fills one gets ENOSPC there instead of eating the node's RAM. The
/// same in noop and live, so a script that ignores ENOSPC writes the
/// same truncated file in both. `/tmp` is where package scripts, dpkg
/// and compilers put their scratch (256 MiB: a few times Debian's
/// largest maintainer-script needs, far under a node's RAM); `/run`
/// holds only small state (pid files, sockets, disco's queue: 64 MiB;
/// Debian's own `/run` is 10 % of RAM, mostly unused); `/dev/shm` is POSIX
/// shared memory for the rare tool that makes it (64 MiB). Template
/// output does not pass through any of them (it is streamed from a pipe).
pub const TMP_LIMIT: &str = "size=256m,nr_inodes=65536";
pub const RUN_LIMIT: &str = "size=64m,nr_inodes=16384";
pub const SHM_LIMIT: &str = "size=64m,nr_inodes=16384";

/// Device nodes bound from the host into the sandbox's `/dev`.
/// Device nodes made in the sandbox's `/dev`: name, major, minor.
pub const DEV_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The operations that mount layer `plan.layer`'s view: one overlay per
/// mount, then fresh `/proc` (with `/proc/sys` read-only), read-only
/// `/sys`, a minimal `/dev`, tmpfs `/tmp` and `/run`.
///
/// Long because it is the sandbox's root as a list, read top to bottom in mount order.
pub fn root_ops(plan: &RootPlan) -> Vec<MountOp> {
    let mut ops = Vec::new();
    for (k, m) in plan.mounts.iter().enumerate() {
        let mut lowers: Vec<PathBuf> = plan
            .stacked
            .iter()
            .rev()
            .map(|&i| RunDir::upper_rel(i, k))
            .collect();
        lowers.extend(plan.squashes.iter().map(|&j| RunDir::squash_rel(j, k)));
        if plan.shims.get(k).copied().unwrap_or(false) {
            lowers.push(RunDir::shim_rel(k));
        }
        lowers.push(plan.root.join(&m.rel));
        ops.push(MountOp::Overlay {
            target: plan.merged.join(&m.rel),
            lowers,
            upper: RunDir::upper_rel(plan.layer, k),
            work: RunDir::work_rel(plan.layer, k),
        });
    }
    let at = |p: &str| plan.merged.join(p);
    if let Some(hidden) = plan.hidden {
        ops.push(MountOp::MaskDir {
            target: plan.merged.join(hidden),
        });
    }
    ops.push(MountOp::DevTmpfs { target: at("dev") });
    for (node, major, minor) in DEV_NODES {
        // mknod is far cheaper than a bind mount per node.
        ops.push(MountOp::CharDevice {
            path: at("dev").join(node),
            major: *major,
            minor: *minor,
        });
    }
    ops.push(MountOp::Mkdir {
        path: at("dev/pts"),
    });
    ops.push(MountOp::Devpts {
        target: at("dev/pts"),
    });
    ops.push(MountOp::Symlink {
        target: "pts/ptmx".into(),
        link: at("dev/ptmx"),
    });
    ops.push(MountOp::Mkdir {
        path: at("dev/shm"),
    });
    ops.push(MountOp::Tmpfs {
        target: at("dev/shm"),
        options: format!("mode=1777,{SHM_LIMIT}"),
    });
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(MountOp::Symlink {
            target: target.into(),
            link: at("dev").join(name),
        });
    }
    ops.push(MountOp::Proc { target: at("proc") });
    for name in PROC_READONLY {
        ops.push(MountOp::ReadonlyInPlace {
            target: at("proc").join(name),
        });
    }
    for name in PROC_MASKED_DIRS {
        ops.push(MountOp::MaskDir {
            target: at("proc").join(name),
        });
    }
    for name in PROC_MASKED_FILES {
        ops.push(MountOp::MaskFile {
            target: at("proc").join(name),
            null: at("dev/null"),
        });
    }
    ops.push(MountOp::SysfsReadonly { target: at("sys") });
    for name in SYS_MASKED_DIRS {
        ops.push(MountOp::MaskDir {
            target: at("sys").join(name),
        });
    }
    for name in SYS_MASKED_FILES {
        ops.push(MountOp::MaskFile {
            target: at("sys").join(name),
            null: at("dev/null"),
        });
    }
    ops.push(MountOp::Tmpfs {
        target: at("tmp"),
        options: format!("mode=1777,{TMP_LIMIT}"),
    });
    ops.push(MountOp::Tmpfs {
        target: at("run"),
        options: format!("mode=755,{RUN_LIMIT}"),
    });
    ops
}

/// The overlay option string, with the naming rule the kernel needs.
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={},metacopy=off,redirect_dir=off,index=off,xino=off,volatile",
        lower.join(":"),
        upper.display(),
        work.display()
    )
}

/// Refuses a ROOT or state path that overlayfs options cannot carry.
pub fn check_option_safe(p: &Path) -> Result<(), String> {
    let s = p.display().to_string();
    if s.contains([',', ':', '\\']) || s.contains(char::is_whitespace) {
        Err(format!(
            "{s}: paths used as overlay layers may not contain ',', ':', '\\' or spaces"
        ))
    } else {
        Ok(())
    }
}

fn mount_err(target: &Path, source: &str, fstype: &str, errno: Errno) -> SandboxError {
    let hint = match (fstype, errno) {
        ("overlay", Errno::ENODEV) => " (this kernel has no overlayfs: modprobe overlay)",
        ("overlay", Errno::EINVAL) => {
            " (is the state dir on a filesystem overlayfs can use as upper, e.g. ext4 or xfs?)"
        }
        _ => "",
    };
    SandboxError::Mount {
        target: target.to_path_buf(),
        from: source.to_string(),
        fstype: fstype.to_string(),
        errno,
        hint,
    }
}

fn prepare(path: &Path, r: std::io::Result<()>) -> Result<(), SandboxError> {
    r.map_err(|source| SandboxError::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

const NONE: Option<&str> = None;

/// Performs one operation (the caller is in the sandbox's mount namespace,
/// with its working directory at the run dir).
///
/// Long because it is one arm per [`MountOp`]; the longer arms are their own functions.
pub fn apply(op: &MountOp) -> Result<(), SandboxError> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match op {
        MountOp::Overlay {
            target,
            lowers,
            upper,
            work,
        } => {
            let opts = overlay_options(lowers, upper, work);
            // No device node or set-id bit of ROOT works in the sandbox:
            // devices only through its own /dev.
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                nosuid_nodev,
                Some(opts.as_str()),
            )
            .map_err(|e| mount_err(target, "overlay", "overlay", e))
        }
        MountOp::Tmpfs { target, options } => mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            nosuid_nodev,
            Some(options.as_str()),
        )
        .map_err(|e| mount_err(target, "tmpfs", "tmpfs", e)),
        MountOp::Proc { target } => mount(
            Some("proc"),
            target,
            Some("proc"),
            nosuid_nodev | MsFlags::MS_NOEXEC,
            NONE,
        )
        .map_err(|e| mount_err(target, "proc", "proc", e)),
        MountOp::SysfsReadonly { target } => mount(
            Some("sysfs"),
            target,
            Some("sysfs"),
            nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
            NONE,
        )
        .map_err(|e| mount_err(target, "sysfs", "sysfs", e)),
        MountOp::Devpts { target } => mount(
            Some("devpts"),
            target,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=620"),
        )
        .map_err(|e| mount_err(target, "devpts", "devpts", e)),
        MountOp::Bind {
            source,
            target,
            readonly,
        } => bind(source, target, *readonly),
        MountOp::ReadonlyInPlace { target } => {
            if fs::symlink_metadata(target).is_err() {
                return Ok(()); // e.g. no /proc/sysrq-trigger on this kernel: nothing to protect
            }
            let src = target.display().to_string();
            mount(Some(target.as_path()), target, NONE, MsFlags::MS_BIND, NONE)
                .map_err(|e| mount_err(target, &src, "bind", e))?;
            remount_readonly(target, &src)
        }
        MountOp::DevTmpfs { target } => mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=755,size=64k"),
        )
        .map_err(|e| mount_err(target, "tmpfs", "tmpfs", e)),
        MountOp::MaskDir { target } => mask_dir(target),
        MountOp::MaskFile { target, null } => mask_file(target, null),
        MountOp::CharDevice { path, major, minor } => char_device(path, *major, *minor),
        MountOp::Mkdir { path } => prepare(
            path,
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path),
        ),
        MountOp::Symlink { target, link } => {
            prepare(link, std::os::unix::fs::symlink(target, link))
        }
    }
}

/// Binds `source` on `target` (made as a file or dir to match), then
/// optionally remounts it read-only (`nosuid`, `nodev`).
fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), SandboxError> {
    let is_dir = fs::metadata(source).map(|m| m.is_dir()).unwrap_or(false);
    if is_dir {
        prepare(
            target,
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(target),
        )?;
    } else {
        if let Some(parent) = target.parent() {
            prepare(
                parent,
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent),
            )?;
        }
        if fs::symlink_metadata(target).is_err() {
            prepare(target, fs::File::create(target).map(drop))?;
        }
    }
    let src = source.display().to_string();
    mount(Some(source), target, NONE, MsFlags::MS_BIND, NONE)
        .map_err(|e| mount_err(target, &src, "bind", e))?;
    if readonly {
        remount_readonly(target, &src)?;
    }
    Ok(())
}

/// An empty read-only tmpfs over a directory, when it exists.
fn mask_dir(target: &Path) -> Result<(), SandboxError> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
        return Ok(()); // not on this kernel or in this root: nothing to hide
    }
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("size=0,mode=755"),
    )
    .map_err(|e| mount_err(target, "tmpfs", "tmpfs (read-only mask)", e))
}

/// `/dev/null` bound read-only and `nodev` over a file, when it exists.
fn mask_file(target: &Path, null: &Path) -> Result<(), SandboxError> {
    if fs::symlink_metadata(target).is_err() {
        return Ok(());
    }
    let src = null.display().to_string();
    mount(Some(null), target, NONE, MsFlags::MS_BIND, NONE)
        .map_err(|e| mount_err(target, &src, "bind", e))?;
    remount_readonly(target, &src)
}

/// A character device node, mode 0666 exactly.
fn char_device(path: &Path, major: u64, minor: u64) -> Result<(), SandboxError> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(major, minor),
    )
    .map_err(|errno| SandboxError::Sys {
        what: format!("mknod {}", path.display()),
        errno,
    })?;
    // The umask took bits away: set the mode exactly.
    prepare(
        path,
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666)),
    )
}

fn remount_readonly(target: &Path, src: &str) -> Result<(), SandboxError> {
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    mount(NONE, target, NONE, flags, NONE)
        .map_err(|e| mount_err(target, src, "bind (read-only)", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw shared:2 - proc proc rw
40 22 0:33 / /srv/root rw shared:3 - ext4 /dev/vdb rw
41 40 0:34 / /srv/root/var/lib rw shared:4 - xfs /dev/vdc rw
42 40 0:35 / /srv/root/proc rw - proc proc rw
43 40 0:36 / /srv/root/mnt/my\\040data rw - tmpfs tmpfs rw
44 40 0:37 / /srv/root/tmp rw - tmpfs tmpfs rw
45 22 0:38 / /srv/rootother rw - ext4 /dev/vdd rw
46 41 0:39 / /srv/root/var/lib/docker/x rw - overlay overlay rw
";

    #[test]
    fn mountinfo_unescapes_and_reads_types() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m[5].mount_point, PathBuf::from("/srv/root/mnt/my data"));
        assert_eq!(m[5].fstype, "tmpfs");
    }

    #[test]
    fn overlays_root_and_real_filesystems_below_it() {
        let m = overlay_mounts(Path::new("/srv/root"), &parse_mountinfo(INFO));
        let rels: Vec<(String, &str)> = m
            .iter()
            .map(|m| (m.rel.display().to_string(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            rels,
            [
                ("".into(), "ext4"),
                ("mnt/my data".into(), "tmpfs"),
                ("var/lib".into(), "xfs")
            ]
        );
    }

    /// The mounts of layer 3 over /srv/root (two stacked uppers, one shim
    /// layer on mount 0), over the squashes `squashes`, hiding `hidden`.
    fn layer_three_ops(
        squashes: &[usize],
        stacked: &[usize],
        hidden: Option<&Path>,
    ) -> Vec<MountOp> {
        let mounts = overlay_mounts(Path::new("/srv/root"), &parse_mountinfo(INFO));
        root_ops(&RootPlan {
            root: Path::new("/srv/root"),
            mounts: &mounts,
            layer: 3,
            squashes,
            stacked,
            shims: &[true],
            merged: Path::new("/s/run/R/merged"),
            hidden,
        })
    }

    /// The lower directories of the overlay `op`, as text.
    fn lowers_of(op: &MountOp) -> Vec<String> {
        let MountOp::Overlay { lowers, .. } = op else {
            panic!("not an overlay: {op:?}")
        };
        lowers.iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn module_three_stacks_two_uppers_over_shims_over_root() {
        let ops = layer_three_ops(&[], &[1, 2], Some(Path::new("var/lib/disco")));
        let MountOp::Overlay {
            target,
            upper,
            work,
            ..
        } = &ops[0]
        else {
            panic!()
        };
        assert_eq!(target, Path::new("/s/run/R/merged/"));
        assert_eq!(lowers_of(&ops[0]), ["u/2-0", "u/1-0", "s/0", "/srv/root/"]);
        assert_eq!(
            (upper.to_str(), work.to_str()),
            (Some("u/3-0"), Some("w/3-0"))
        );
        let MountOp::Overlay { target, lowers, .. } = &ops[2] else {
            panic!()
        };
        assert_eq!(target, Path::new("/s/run/R/merged/var/lib"));
        assert_eq!(lowers.last().unwrap(), Path::new("/srv/root/var/lib"));
        assert_eq!(lowers.len(), 3, "no shim layer on mount 1");
    }

    #[test]
    fn squashed_first_layers_are_one_lower_under_the_stacked_rest() {
        // The first layers are squashes, the rest stacked on them.
        let squashed = layer_three_ops(&[5, 4], &[2], None);
        assert_eq!(
            lowers_of(&squashed[0]),
            ["u/2-0", "q/5-0", "q/4-0", "s/0", "/srv/root/"]
        );
    }

    #[test]
    fn state_dir_proc_and_sys_are_masked_after_what_they_need() {
        let ops = layer_three_ops(&[], &[1, 2], Some(Path::new("var/lib/disco")));
        assert!(ops.contains(&MountOp::ReadonlyInPlace {
            target: "/s/run/R/merged/proc/sys".into()
        }));
        assert!(ops.contains(&MountOp::SysfsReadonly {
            target: "/s/run/R/merged/sys".into()
        }));
        // The state dir is masked right after the overlays, before /dev and /proc.
        assert_eq!(
            ops[3],
            MountOp::MaskDir {
                target: "/s/run/R/merged/var/lib/disco".into()
            }
        );
        assert!(ops.contains(&MountOp::MaskDir {
            target: "/s/run/R/merged/proc/irq".into()
        }));
        assert!(ops.contains(&MountOp::MaskFile {
            target: "/s/run/R/merged/proc/sysrq-trigger".into(),
            null: "/s/run/R/merged/dev/null".into()
        }));
        // /sys's masks come after /sys is mounted.
        let sys = ops
            .iter()
            .position(|o| matches!(o, MountOp::SysfsReadonly { .. }));
        let firmware = ops.iter().position(|o| {
            o == &MountOp::MaskDir {
                target: "/s/run/R/merged/sys/firmware".into(),
            }
        });
        assert!(firmware.is_some() && sys < firmware, "{ops:?}");
        assert!(ops.contains(&MountOp::MaskFile {
            target: "/s/run/R/merged/sys/kernel/vmcoreinfo".into(),
            null: "/s/run/R/merged/dev/null".into()
        }));
        let dev = ops
            .iter()
            .position(|o| matches!(o, MountOp::DevTmpfs { .. }));
        let mask = ops
            .iter()
            .position(|o| matches!(o, MountOp::MaskFile { .. }));
        assert!(dev < mask, "/dev/null exists before it masks /proc files");
    }

    #[test]
    fn every_tmpfs_a_module_can_write_has_a_size_and_an_inode_count() {
        let ops = layer_three_ops(&[], &[1, 2], Some(Path::new("var/lib/disco")));
        let sized: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                MountOp::Tmpfs { target, options } => Some((target, options)),
                _ => None,
            })
            .collect();
        assert_eq!(sized.len(), 3, "{ops:?}");
        for (target, options) in sized {
            assert!(
                options.contains("size=") && options.contains("nr_inodes="),
                "{} is mounted with {options}",
                target.display()
            );
        }
    }

    #[test]
    fn overlay_options_name_each_dir_and_turn_the_extras_off() {
        assert_eq!(
            overlay_options(&[PathBuf::from("u/1-0"), PathBuf::from("/r")], Path::new("u/2-0"), Path::new("w/2-0")),
            "lowerdir=u/1-0:/r,upperdir=u/2-0,workdir=w/2-0,metacopy=off,redirect_dir=off,index=off,xino=off,volatile"
        );
    }

    #[test]
    fn first_layer_has_only_root_below() {
        let mounts = vec![Mount {
            rel: PathBuf::new(),
            fstype: "ext4".into(),
        }];
        let ops = root_ops(&RootPlan {
            root: Path::new("/r"),
            mounts: &mounts,
            layer: 1,
            squashes: &[],
            stacked: &[],
            shims: &[false],
            merged: Path::new("/m"),
            hidden: None,
        });
        let MountOp::Overlay { lowers, .. } = &ops[0] else {
            panic!()
        };
        assert_eq!(lowers, &[PathBuf::from("/r/")]);
    }
}
