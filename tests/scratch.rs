//! The scratch can never fill the host's disk (issue 24): its size is
//! worked out at every run from `scratch_max` and the free space of the
//! state dir's filesystem less `scratch_reserve`; a module that fills it
//! fails naming `scratch_max`, even when its script ignored ENOSPC; its
//! blocks go back after the run. Each test puts the state dir on a small
//! ext4 filesystem of its own (a loop-mounted image the test makes,
//! unmounted by a guard even when the test fails), so "the disk" that
//! must not fill is that one, never the host's; each dance runs under an
//! outer limit of its own (`bounded`).
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::root::{FixtureRoot, MountGuard};
use common::{bounded, Ended, Fixture};

const MIB: u64 = 1 << 20;

/// A `size` ext4 filesystem (no root reserve) made in `img` and
/// loop-mounted at `at`; unmounted when dropped (the loop device goes
/// with it: `mount -o loop` sets autoclear).
fn small_fs(img: &Path, at: &Path, size: u64) -> MountGuard {
    fs::File::create(img).unwrap().set_len(size).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
    fs::create_dir_all(at).unwrap();
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(img)
        .arg(at)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount: {out:?}");
    MountGuard(at.to_path_buf())
}

/// (size, free) of the filesystem at `dir`, bytes.
fn space(dir: &Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    (
        st.blocks() * st.fragment_size(),
        st.blocks_available() * st.fragment_size(),
    )
}

/// Runs `dance` (noop when `noop`) with `state`, sampling the free space
/// of `state`'s filesystem every 10 ms: what it ended with and the least
/// free space seen.
fn watched_dance(f: &Fixture, state: &Path, root: &Path, noop: bool) -> (Ended, u64) {
    let least = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let (least, done, dir) = (least.clone(), done.clone(), state.to_path_buf());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                least.fetch_min(space(&dir).1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    let mut c = f.process(state, root);
    c.arg("dance");
    if noop {
        c.env("NOOP", "true");
    }
    let e = bounded(c);
    done.store(true, Ordering::Relaxed);
    watch.join().unwrap();
    (e, least.load(Ordering::Relaxed))
}

/// A module `m` whose script writes until ENOSPC and ignores it, as a
/// careless one would, then carries on and succeeds.
fn filler(f: &Fixture) {
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-fill",
        "mkdir -p /opt\ncat /dev/zero > /opt/big 2>/dev/null; true\ndd if=/dev/zero of=/opt/more bs=1M count=50 2>/dev/null || true\necho wrote $(stat -c %s /opt/big)\n",
        0o755,
    );
}

/// The one `error:` line of a run.
fn error_line(e: &Ended) -> String {
    let errors: Vec<_> = e.err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}{}", e.out, e.err);
    errors[0].to_string()
}

fn no_os_error(e: &Ended) {
    let all = format!("{}{}", e.out, e.err);
    assert!(!all.contains("os error"), "{all}");
    assert!(!all.contains("panicked"), "{all}");
}

/// The state dir inside ROOT on a 128 MiB filesystem of its own (the usual
/// node, small): noop and live both fail the filling module naming
/// `scratch_max`, the filesystem keeps its reserve all along, the image's
/// blocks are back after each run, and the next dance works.
#[test]
fn filling_the_scratch_fails_the_module_and_keeps_the_reserve() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let state = r.path.join("var/lib/disco");
    let _fs = small_fs(&f.dir.path().join("state.img"), &state, 128 * MIB);
    // More than the filesystem holds: the free space decides.
    fs::write(f.config(), "scratch_max = 1073741824\n").unwrap();
    filler(&f);
    let (total, _) = space(&state);
    let reserve = total / 10;
    for noop in [true, false] {
        let (e, least) = watched_dance(&f, &state, &r.path, noop);
        let line = error_line(&e);
        assert_eq!(e.code, 1, "{}{}", e.out, e.err);
        assert!(
            line.starts_with("error: m: the scratch is full (scratch_max = 1.0 GiB, cut to "),
            "{line}"
        );
        assert!(
            line.contains("by the free space of") && line.contains("less scratch_reserve = 10%"),
            "{line}"
        );
        assert!(
            line.ends_with("a step wrote until it had no space left (what it wrote was cut short)"),
            "{line}"
        );
        no_os_error(&e);
        let img = state.join("scratch.img");
        let du = fs::metadata(&img).unwrap().blocks() * 512;
        let (_, free) = space(&state);
        eprintln!(
            "noop={noop}: {total} B filesystem, reserve {reserve} B, least free seen {least} B, free after {free} B, image {} B apparent, {du} B on disk after",
            fs::metadata(&img).unwrap().len()
        );
        assert!(
            least >= reserve,
            "free space {least} went under the reserve {reserve}"
        );
        assert!(du < 16 * MIB, "the image still holds {du} bytes");
        assert!(!r.path.join("opt/big").exists());
    }
    // The next dance works.
    f.module_file(
        "m",
        "scripts/10-fill",
        "mkdir -p /opt\necho ok > /opt/small\n",
        0o755,
    );
    for noop in [true, false] {
        let (e, _) = watched_dance(&f, &state, &r.path, noop);
        assert_eq!(e.code, 0, "{}{}", e.out, e.err);
    }
    assert_eq!(
        fs::read_to_string(r.path.join("opt/small")).unwrap(),
        "ok\n"
    );
    // A new scratch_max: the image is made anew at that size.
    let img = state.join("scratch.img");
    let cut = fs::metadata(&img).unwrap().len();
    assert!((64 * MIB..=total - reserve).contains(&cut), "{cut}");
    fs::write(f.config(), "scratch_max = 67108864\n").unwrap();
    let (e, _) = watched_dance(&f, &state, &r.path, true);
    assert_eq!(e.code, 0, "{}{}", e.out, e.err);
    assert_eq!(fs::metadata(&img).unwrap().len(), 64 * MIB);
}

/// The state dir outside ROOT: a live dance keeps its layers in the state
/// dir itself (no image), so what fills is the state dir's filesystem; the
/// module fails naming it, in one line, and the next dance works. A noop
/// dance uses the image there too, bounded as inside ROOT.
#[test]
fn filling_the_state_dirs_filesystem_fails_the_module_naming_it() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let state: PathBuf = f.dir.path().join("state");
    let _fs = small_fs(&f.dir.path().join("state.img"), &state, 128 * MIB);
    fs::write(f.config(), "scratch_max = 1073741824\n").unwrap();
    filler(&f);
    let (e, _) = watched_dance(&f, &state, &r.path, false);
    let line = error_line(&e);
    assert_eq!(e.code, 1, "{}{}", e.out, e.err);
    assert!(
        line.starts_with(&format!(
            "error: m: the filesystem of the state dir {} is full: ",
            state.display()
        )),
        "{line}"
    );
    no_os_error(&e);
    assert!(!r.path.join("opt/big").exists());
    let (e, least) = watched_dance(&f, &state, &r.path, true);
    let line = error_line(&e);
    assert!(
        line.starts_with("error: m: the scratch is full (scratch_max = 1.0 GiB"),
        "{line}"
    );
    assert!(least >= space(&state).0 / 10, "{least}");
    no_os_error(&e);
    f.module_file(
        "m",
        "scripts/10-fill",
        "mkdir -p /opt\necho ok > /opt/small\n",
        0o755,
    );
    let (e, _) = watched_dance(&f, &state, &r.path, false);
    assert_eq!(e.code, 0, "{}{}", e.out, e.err);
    assert_eq!(
        fs::read_to_string(r.path.join("opt/small")).unwrap(),
        "ok\n"
    );
}

/// No room for a scratch at all: one line naming both settings and the
/// free space, before any module runs.
#[test]
fn no_room_for_the_scratch_is_one_line_naming_both_settings() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let state = r.path.join("var/lib/disco");
    let _fs = small_fs(&f.dir.path().join("state.img"), &state, 128 * MIB);
    fs::write(
        f.config(),
        "scratch_max = 1073741824\nscratch_reserve = \"60%\"\n",
    )
    .unwrap();
    filler(&f);
    let (e, _) = watched_dance(&f, &state, &r.path, true);
    assert_eq!(e.code, 1, "{}{}", e.out, e.err);
    let line = error_line(&e);
    for part in [
        "no room for the scratch: the state dir's filesystem (",
        "scratch_reserve = 60%",
        "scratch_max = 1.0 GiB",
        " free ",
    ] {
        assert!(line.contains(part), "{part}: {line}");
    }
    assert!(!e.out.contains("wrote"), "{}", e.out);
    no_os_error(&e);
}
