//! The disk-backed scratch: when the state dir lies inside a filesystem
//! the sandbox overlays (the usual node: ROOT `/`, state `/var/lib/disco`),
//! overlayfs refuses upper layers below a lower layer's root, so the
//! layers live in their own filesystem: a sparse ext4 image,
//! `STATE/scratch.img`, loop-mounted for each run at `STATE/run/RUN/mem`
//! in disco's own mount namespace. A noop dance uses it wherever the
//! state dir is.
//!
//! Owns the image's size, its blocks and what "the scratch is full"
//! means. On disk, not in RAM: a package install writing gigabytes leaves
//! `Shmem` flat. It can never take the host's last free space: its size
//! is worked out again at every run ([`Sizing`]) as `scratch_max`
//! (default 2 GiB or 10% of the state dir's filesystem, whichever is
//! less), cut to the free space of that filesystem (the image's own
//! blocks counted as free) less `scratch_reserve` (default 10% of it);
//! the image is made anew when that size is not its own (or ext4
//! recorded errors in it, or it has no journal). Blocks are used only as
//! written; when a run empties the image, what it still holds beyond
//! 16 MiB is given back (`FITRIM`): between runs the image holds its ext4
//! metadata and journal (~1–5 MiB) and at most 16 MiB of freed blocks,
//! which the next run writes again. A module that fills it (even one whose
//! script ignored ENOSPC) fails naming `scratch_max` ([`full`]): noop and
//! live then never differ by a file the scratch cut short. A run killed
//! in its merge leaves its layers in the image: the next run mounts it
//! again (as it is) and finishes the merge.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::config::{Reserve, DEFAULT_SCRATCH_MAX, DEFAULT_SCRATCH_SHARE};
use crate::fsutil::human_bytes;

/// The smallest scratch a run can use.
pub const MIN_SIZE: u64 = 64 << 20;

/// Less free space than this left in a filesystem is "full": a write
/// there has met ENOSPC (or would with its next block).
const FULL_MARGIN: u64 = 1 << 20;

/// The image in a state dir.
pub fn image(state_dir: &Path) -> PathBuf {
    state_dir.join("scratch.img")
}

/// The scratch settings: `scratch_max` (`None`: the default) and
/// `scratch_reserve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max: Option<u64>,
    pub reserve: Reserve,
}

/// The space of the state dir's filesystem, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Its size.
    pub total: u64,
    /// Free for anyone (`df`'s Avail: root's reserved blocks not counted).
    pub free: u64,
    /// The blocks the image holds now (it may take them again).
    pub image: u64,
}

impl Space {
    /// The space of `state_dir`'s filesystem now.
    pub fn of(state_dir: &Path) -> Result<Space> {
        use std::os::unix::fs::MetadataExt;
        let st = nix::sys::statvfs::statvfs(state_dir).with_context(|| {
            format!(
                "cannot read the free space of the state dir {}",
                state_dir.display()
            )
        })?;
        let image = fs::metadata(image(state_dir))
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        Ok(Space {
            total: st.blocks() * st.fragment_size(),
            free: st.blocks_available() * st.fragment_size(),
            image,
        })
    }
}

/// The scratch's size for one run, from the settings and the space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// `scratch_max`, the default worked out.
    pub max: u64,
    /// `scratch_reserve` in bytes.
    pub reserve: u64,
    /// What the filesystem can give: free (with the image's own blocks)
    /// less the reserve.
    pub room: u64,
    /// The size to use: the lesser of `max` and `room`, whole MiB.
    pub usable: u64,
}

impl Sizing {
    /// Pure: the size for `limits` on a filesystem with `space`.
    pub fn new(limits: Limits, space: Space) -> Sizing {
        let max = limits.max.unwrap_or_else(|| {
            DEFAULT_SCRATCH_MAX.min(Reserve::Percent(DEFAULT_SCRATCH_SHARE).of(space.total))
        });
        let reserve = limits.reserve.of(space.total);
        let room = (space.free + space.image).saturating_sub(reserve);
        let usable = max.min(room) & !((1 << 20) - 1);
        Sizing {
            max,
            reserve,
            room,
            usable,
        }
    }

    /// The usable size, or one line saying why the scratch cannot be
    /// made (naming both settings and the free space).
    pub fn check(&self, limits: Limits, space: Space, state_dir: &Path) -> Result<u64> {
        if self.max < MIN_SIZE {
            let what = match limits.max {
                Some(_) => format!("scratch_max: {}", human_bytes(self.max)),
                None => format!(
                    "scratch_max (not set: {}% of the state dir's filesystem {}) = {}",
                    DEFAULT_SCRATCH_SHARE,
                    state_dir.display(),
                    human_bytes(self.max)
                ),
            };
            return Err(NoRoom(format!(
                "{what} is too small for the scratch filesystem ({} at least)",
                human_bytes(MIN_SIZE)
            ))
            .into());
        }
        if self.usable < MIN_SIZE {
            return Err(NoRoom(format!(
                "no room for the scratch: the state dir's filesystem ({}) has {} free and scratch_reserve = {} keeps {} of it, which leaves less than the {} a run needs (scratch_max = {}): free some space there or lower scratch_reserve",
                state_dir.display(),
                human_bytes(space.free + space.image),
                limits.reserve,
                human_bytes(self.reserve),
                human_bytes(MIN_SIZE),
                human_bytes(self.max)
            ))
            .into());
        }
        Ok(self.usable)
    }

    /// True when an image of `have` bytes will do: not over the usable
    /// size, and not much under it (a free space that moves a little
    /// between runs does not remake it each time).
    pub fn fits(&self, have: u64) -> bool {
        have <= self.max.min(self.room) && have >= self.usable - self.usable / 16
    }
}

/// What the settings are, for a message: `scratch_max = 2.0 GiB`, and
/// what the free space cut it to when it did.
pub fn describe(state_dir: &Path, limits: Limits) -> String {
    let have = fs::metadata(image(state_dir)).map(|m| m.len()).ok();
    let Ok(space) = Space::of(state_dir) else {
        return match limits.max {
            Some(m) => format!("scratch_max = {}", human_bytes(m)),
            None => "scratch_max".into(),
        };
    };
    let sizing = Sizing::new(limits, space);
    match have {
        Some(h) if h + (1 << 20) < sizing.max => format!(
            "scratch_max = {}, cut to {} by the free space of {} less scratch_reserve = {}",
            human_bytes(sizing.max),
            human_bytes(h),
            state_dir.display(),
            limits.reserve
        ),
        _ => format!("scratch_max = {}", human_bytes(sizing.max)),
    }
}

/// How the filesystem holding `dir` is full, if it is: `full` (less
/// than a MiB free) or `out of inodes`.
pub fn full(dir: &Path) -> Option<&'static str> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    if st.blocks_available() * st.fragment_size() < FULL_MARGIN {
        Some("full")
    } else if st.files() > 0 && st.files_available() == 0 {
        Some("out of inodes")
    } else {
        None
    }
}

/// How many errors ext4 recorded in the filesystem mounted at `mem`
/// (`/sys/fs/ext4/DEV/errors_count`); 0 when it cannot say.
fn ext4_errors(mem: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = fs::metadata(mem).map(|m| m.dev()) else {
        return 0;
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_os_string()))
        .and_then(|name| {
            fs::read_to_string(Path::new("/sys/fs/ext4").join(name).join("errors_count")).ok()
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// One line for an error that ran out of disk space (ENOSPC, EDQUOT
/// anywhere in its chain), without the bare `os error 28`: what was being
/// done, then which filesystem is full — the run's scratch (`scratch`:
/// where it is mounted and its settings) or the state dir's. `None` for
/// any other error.
pub fn explain_no_space(
    e: &anyhow::Error,
    state_dir: &Path,
    scratch: Option<(&Path, Limits)>,
) -> Option<String> {
    use std::io::ErrorKind;
    // By kind too: a wrapped io::Error (tempfile's) has no raw code.
    let io_code = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<std::io::Error>()
            .map(|io| match io.kind() {
                ErrorKind::StorageFull => libc::ENOSPC,
                ErrorKind::QuotaExceeded => libc::EDQUOT,
                _ => io.raw_os_error().unwrap_or(0),
            })
    };
    let code = e
        .chain()
        .filter_map(io_code)
        .find(|c| [libc::ENOSPC, libc::EDQUOT].contains(c))?;
    let doing: Vec<String> = e
        .chain()
        .filter(|c| io_code(*c).is_none())
        .map(|c| c.to_string())
        .collect();
    let scratch_full = scratch.and_then(|(mem, limits)| {
        crate::run::is_mount_point(mem)
            .then(|| full(mem))
            .flatten()
            .map(|how| format!("the scratch is {how} ({})", describe(state_dir, limits)))
    });
    let what = match (scratch_full, full(state_dir), Space::of(state_dir)) {
        (Some(line), _, _) => line,
        (None, Some(how), Ok(space)) => format!(
            "the filesystem of the state dir {} is {how} ({} free)",
            state_dir.display(),
            human_bytes(space.free)
        ),
        _ if code == libc::EDQUOT => "over its disk quota".to_string(),
        _ => "no space left on its filesystem".to_string(),
    };
    Some(if doing.is_empty() {
        what
    } else {
        format!("{}: {what}", doing.join(": "))
    })
}

/// Gives the free blocks of the filesystem at `mem` back to the disk
/// when the image `img` still holds them (`FITRIM`: the loop device
/// punches holes in the image). A check of two numbers, and a trim (some
/// 25–70 ms for 2 GiB) only when more than 16 MiB are held that the
/// filesystem does not use (a run that wrote that much) — or always
/// (`all`: a run that had secrets, whose freed blocks may hold them). Best effort: a filesystem that cannot trim keeps them,
/// and the next run's [`Sizing`] counts them as the image's own.
pub fn trim(mem: &Path, img: &Path, all: bool) {
    use std::os::unix::fs::MetadataExt;
    #[repr(C)]
    struct FstrimRange {
        start: u64,
        len: u64,
        minlen: u64,
    }
    // _IOWR('X', 121, struct fstrim_range)
    const FITRIM: libc::c_ulong = 0xC018_5879;
    let held = fs::metadata(img).map(|m| m.blocks() * 512).unwrap_or(0);
    let used = nix::sys::statvfs::statvfs(mem)
        .map(|st| (st.blocks() - st.blocks_free()) * st.fragment_size())
        .unwrap_or(0);
    if !all && held <= used + (16 << 20) {
        return;
    }
    let Ok(dir) = fs::File::open(mem) else {
        return;
    };
    use std::os::fd::AsRawFd;
    // Blocks freed in the journal's running transaction are free for
    // FITRIM only once it commits.
    let _ = nix::unistd::syncfs(dir.as_raw_fd());
    let mut range = FstrimRange {
        start: 0,
        len: u64::MAX,
        minlen: 0,
    };
    // SAFETY: FITRIM reads and writes one fstrim_range we own.
    unsafe {
        libc::ioctl(dir.as_raw_fd(), FITRIM as _, &mut range);
    }
}

/// Inodes in use past which a run's scratch image is dropped at its end
/// rather than emptied ([`crowded`]).
const RENEW_INODES: u64 = 4096;

/// True when the scratch filesystem at `mem` holds more than
/// [`RENEW_INODES`] inodes (a run of some hundreds of modules): emptied
/// file by file, each costs some 30 µs (4,096 of them over 100 ms, a
/// 2,000-module run's tens of thousands seconds), where the image is
/// unmounted and removed at once (its blocks go back with it) and the
/// next run makes it anew (`mkfs.ext4`, about 7 ms).
pub fn crowded(mem: &Path) -> bool {
    nix::sys::statvfs::statvfs(mem)
        .is_ok_and(|st| st.files().saturating_sub(st.files_free()) > RENEW_INODES)
}

/// Mounts the image at `mem`. With `limits` (a new run): sized for this
/// run ([`Sizing`], made anew when its size will not do, or refused in one
/// line when there is no room) and emptied of what an earlier run left.
/// Without (`None`: a merge to finish), mounted as it is.
pub fn mount(state_dir: &Path, mem: &Path, limits: Option<Limits>) -> Result<()> {
    match mount_once(state_dir, mem, limits, false) {
        // A damaged image (a crash without a journal): made anew, unless
        // it holds a merge to finish.
        Err(e) if limits.is_some() && !is_no_room(&e) => mount_once(state_dir, mem, limits, true),
        r => r,
    }
}

/// The error of [`Sizing::check`], which making the image anew cannot mend.
fn is_no_room(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NoRoom>().is_some()
}

/// The scratch cannot be made with these settings on this filesystem.
#[derive(Debug)]
pub struct NoRoom(String);

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoRoom {}

/// One try of [`mount`]: the image made (anew with `force`) when its size
/// will not do, mounted, checked and emptied.
fn mount_once(state_dir: &Path, mem: &Path, limits: Option<Limits>, force: bool) -> Result<()> {
    let img = image(state_dir);
    let current = fs::metadata(&img).ok().map(|m| m.len());
    let want = match limits {
        Some(limits) => {
            let space = Space::of(state_dir)?;
            let sizing = Sizing::new(limits, space);
            let usable = sizing.check(limits, space, state_dir)?;
            let keep = current.is_some_and(|have| sizing.fits(have)) && has_journal(&img);
            Some(usable).filter(|_| force || !keep)
        }
        None if current.is_none() => bail!(
            "the scratch image {} is missing: its layers are gone",
            img.display()
        ),
        None => None,
    };
    if let Some(want) = want {
        make_image(&img, want)?;
    }
    if loop_mount(&img, mem).is_err() {
        mount_command(&img, mem)?;
    }
    if limits.is_some() {
        // Errors ext4 recorded (an image a full disk once cut short reads
        // back as `Bad message`): made anew, by the caller.
        let errors = ext4_errors(mem);
        if errors > 0 {
            let _ = nix::mount::umount2(mem, nix::mount::MntFlags::MNT_DETACH);
            bail!(
                "the scratch filesystem {} recorded {errors} error(s)",
                img.display()
            );
        }
        clear(mem)?;
        trim(mem, &img, false);
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(mem, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Whether the image `img` is an ext4 with a journal (`has_journal` in
/// its superblock's compatible features). One made by a disco before the
/// journal is made anew ([`make_image`] says why it has one).
fn has_journal(img: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    // The superblock is at byte 1024; s_feature_compat at 0x5C in it.
    const FEATURE_COMPAT: u64 = 1024 + 0x5C;
    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    let mut word = [0u8; 4];
    fs::File::open(img)
        .and_then(|f| f.read_exact_at(&mut word, FEATURE_COMPAT))
        .is_ok_and(|()| u32::from_le_bytes(word) & COMPAT_HAS_JOURNAL != 0)
}

/// Makes durable what the scratch filesystem mounted at `mem` holds, once
/// a `syncfs` of it pushed it into the image file: mounted `barrier=0`,
/// that filesystem never flushes the loop device, so the image file is
/// fsynced here — before a merge, whose remaining work a crash leaves in
/// the layers. Nothing when the layers are not in the image.
pub fn sync_image(state_dir: &Path, mem: &Path) -> Result<()> {
    if !crate::run::is_mount_point(mem) {
        return Ok(());
    }
    let img = image(state_dir);
    fs::File::open(&img)
        .and_then(|f| f.sync_data())
        .with_context(|| format!("cannot sync the scratch image {}", img.display()))
}

/// Makes the image `img` anew, `want` bytes: an ext4 with the smallest
/// journal (4 MiB, its blocks written only as it is used). Without one,
/// ext4 does not reuse an inode freed in the last 5 s (305 s while its
/// inode table block is dirty) and every allocation scans past them
/// (`recently_deleted`): each run frees hundreds, so the next run's every
/// file and directory cost a scan of them — 9 % of a 20-module dance's
/// CPU in `perf`. The journal's commits never reach the disk by
/// themselves: the image is mounted `barrier=0` and made durable only
/// when a merge needs it ([`sync_image`]).
fn make_image(img: &Path, want: u64) -> Result<()> {
    let _ = fs::remove_file(img);
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(img)
        .with_context(|| format!("cannot create {}", img.display()))?;
    f.set_len(want)
        .with_context(|| format!("cannot size {}", img.display()))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-J", "size=4", "-L", "disco-scratch"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(img)
        .output()
        .context("cannot run mkfs.ext4 (e2fsprogs) to make the scratch filesystem")?;
    if !out.status.success() {
        let _ = fs::remove_file(img);
        bail!(
            "cannot make the scratch filesystem {}: {}",
            img.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes what an earlier run left in the mounted scratch `mem`.
fn clear(mem: &Path) -> Result<()> {
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
    Ok(())
}

/// The scratch's mount flags and options, both ways of mounting it. No
/// `discard`: a delete that punches a hole in the image file doubled the
/// time to empty it and slowed the next run's writes; its free blocks go
/// back by `FITRIM` when it holds more than 16 MiB it does not use
/// ([`trim`]). `barrier=0`: see [`make_image`].
const MOUNT_OPTIONS: &str = "nosuid,nodev,barrier=0";
/// The filesystem-specific part of [`MOUNT_OPTIONS`] (the flags are
/// `MS_NOSUID | MS_NODEV`).
const MOUNT_DATA: &str = "barrier=0";

/// `mount -o loop` (util-linux), where [`loop_mount`] could not.
fn mount_command(img: &Path, mem: &Path) -> Result<()> {
    let out = Command::new("mount")
        .args(["-t", "ext4", "-o"])
        .arg(format!("loop,{MOUNT_OPTIONS}"))
        .arg(img)
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
    Ok(())
}

/// `<linux/loop.h>`: the ioctls and the one flag used here.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Mounts `img` on `mem` through a free loop device set up with ioctls
/// (`LOOP_CTL_GET_FREE`, then `LOOP_CONFIGURE` with autoclear: the
/// device goes with the mount), what `mount -o loop` does, without
/// starting it: 8–10 ms saved a dance here. Any error (no
/// `/dev/loop-control` in a container, a kernel before 5.8 without
/// `LOOP_CONFIGURE`) and the caller runs `mount` instead.
fn loop_mount(img: &Path, mem: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let os_err = |what: &str| anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error());
    let ctl = fs::File::open("/dev/loop-control").context("/dev/loop-control")?;
    let backing = fs::OpenOptions::new().read(true).write(true).open(img)?;
    // Another process may take the free device first: a few tries.
    for _ in 0..5 {
        // SAFETY: an ioctl without argument on a descriptor we own.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(os_err("LOOP_CTL_GET_FREE"));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let lo = fs::OpenOptions::new().read(true).write(true).open(&dev)?;
        // SAFETY: plain data, zero is its empty value.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        let name = img.as_os_str().as_encoded_bytes();
        let len = name.len().min(63);
        config.info.file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: LOOP_CONFIGURE reads one loop_config we own.
        if unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_CONFIGURE as _, &config) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(os_err("LOOP_CONFIGURE"));
        }
        let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
        // The device clears itself once `lo` closes, unless mounted.
        return nix::mount::mount(Some(&dev), mem, Some("ext4"), flags, Some(MOUNT_DATA))
            .with_context(|| format!("cannot mount {} on {}", dev.display(), mem.display()));
    }
    bail!("no free loop device")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn limits(max: Option<u64>, reserve: Reserve) -> Limits {
        Limits { max, reserve }
    }

    #[test]
    fn the_default_is_2_gib_or_a_tenth_of_the_filesystem() {
        let big = Space {
            total: 100 * GIB,
            free: 50 * GIB,
            image: 0,
        };
        let s = Sizing::new(limits(None, Reserve::Percent(10)), big);
        assert_eq!((s.max, s.reserve, s.usable), (2 * GIB, 10 * GIB, 2 * GIB));
        let small = Space {
            total: 10 * GIB,
            free: 9 * GIB,
            image: 0,
        };
        let s = Sizing::new(limits(None, Reserve::Percent(10)), small);
        assert_eq!(s.max, GIB);
        assert_eq!(s.usable, GIB);
    }

    #[test]
    fn the_free_space_less_the_reserve_bounds_it() {
        // 1 GiB filesystem, 300 MiB free, the image holding 20 MiB of it:
        // 320 MiB less a reserve of 102.4 MiB, in whole MiB.
        let space = Space {
            total: GIB,
            free: 300 * MIB,
            image: 20 * MIB,
        };
        let l = limits(Some(8 * GIB), Reserve::Percent(10));
        let s = Sizing::new(l, space);
        assert_eq!(s.room, 320 * MIB - GIB / 10);
        assert_eq!(s.usable, 217 * MIB);
        assert_eq!(s.check(l, space, Path::new("/s")).unwrap(), 217 * MIB);
        // Bytes as the reserve.
        let s = Sizing::new(limits(Some(8 * GIB), Reserve::Bytes(100 * MIB)), space);
        assert_eq!(s.usable, 220 * MIB);
        // scratch_max under the room: scratch_max.
        let s = Sizing::new(limits(Some(128 * MIB), Reserve::Percent(10)), space);
        assert_eq!(s.usable, 128 * MIB);
        // A reserve larger than the free space: no room at all.
        let s = Sizing::new(limits(None, Reserve::Percent(50)), space);
        assert_eq!((s.room, s.usable), (0, 0));
    }

    #[test]
    fn too_little_room_is_one_line_naming_both_settings() {
        let space = Space {
            total: GIB,
            free: 150 * MIB,
            image: 0,
        };
        let l = limits(Some(GIB), Reserve::Percent(10));
        let s = Sizing::new(l, space);
        let e = s.check(l, space, Path::new("/var/lib/disco")).unwrap_err();
        let m = e.to_string();
        assert!(e.downcast_ref::<NoRoom>().is_some());
        assert!(!m.contains('\n'), "{m}");
        for part in [
            "/var/lib/disco",
            "150.0 MiB free",
            "scratch_reserve = 10%",
            "keeps 102.4 MiB",
            "scratch_max = 1.0 GiB",
        ] {
            assert!(m.contains(part), "{part}: {m}");
        }
        // The default on a small filesystem: a tenth is under 64 MiB.
        let tiny = Space {
            total: 256 * MIB,
            free: 200 * MIB,
            image: 0,
        };
        let l = limits(None, Reserve::Percent(10));
        let m = Sizing::new(l, tiny)
            .check(l, tiny, Path::new("/s"))
            .unwrap_err()
            .to_string();
        assert!(m.starts_with("scratch_max (not set: 10% of"), "{m}");
    }

    #[test]
    fn no_space_is_said_without_the_os_error() {
        let d = tempfile::tempdir().unwrap();
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("cannot write /x");
        let m = explain_no_space(&e, d.path(), None).unwrap();
        assert_eq!(m, "cannot write /x: no space left on its filesystem");
        let other = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(explain_no_space(&other, d.path(), None).is_none());
    }

    #[test]
    fn an_image_near_the_size_is_kept_one_over_it_is_not() {
        let space = Space {
            total: 10 * GIB,
            free: 5 * GIB,
            image: 0,
        };
        let s = Sizing::new(limits(None, Reserve::Percent(10)), space);
        assert!(s.fits(GIB));
        assert!(!s.fits(GIB + 1));
        assert!(!s.fits(GIB / 2));
        assert!(s.fits(GIB - GIB / 32));
    }

    /// An image made here has the journal that spares every allocation a
    /// scan of the inodes freed in the last minutes; one made without (by
    /// an earlier disco) is seen as such, and so made anew at mount.
    #[test]
    fn images_are_made_with_a_journal_and_older_ones_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("scratch.img");
        make_image(&img, MIN_SIZE).unwrap();
        assert!(has_journal(&img));
        let old = dir.path().join("old.img");
        fs::File::create(&old).unwrap().set_len(MIN_SIZE).unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal"])
            .arg(&old)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(!has_journal(&old));
        assert!(!has_journal(&dir.path().join("missing.img")));
    }
}
