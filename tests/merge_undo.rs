//! Merge and undo that never lose a file and never wedge a node: undo
//! resumable at every kill point, no symlink followed, special files and
//! any file name on both merge paths, one lock per root, a failed merge
//! rolled back, hard links, holes and file capabilities kept.
mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::root::{snapshot_no_mtimes, FixtureRoot, MountGuard};
use common::{helper, run, Fixture};

/// Every path below `dir` whose name contains `needle`.
fn names_with(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_name()
            .as_bytes()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            out.push(p.clone());
        }
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(names_with(&p, needle));
        }
    }
    out
}

/// `disco` for this fixture on `root`, with `state` as its state dir.
fn disco(f: &Fixture, root: &Path, state: &Path) -> assert_cmd::Command {
    let mut c = f.disco_with_state(state);
    c.arg("--server")
        .arg(f.server())
        .args(["--node", "n", "--root"])
        .arg(root);
    c
}

/// 100 files modified, 100 created, a directory replaced by a file and a
/// directory deleted: an undo of several hundred renames and unlinks.
fn big_change(f: &Fixture, r: &FixtureRoot) {
    f.node("n", &["m"]).module("m", "");
    for i in 0..100 {
        r.file(&format!("srv/mod/f{i:03}"), &format!("old {i}\n"));
        f.module_file(
            "m",
            &format!("files/srv/mod/f{i:03}"),
            &format!("new {i}\n"),
            0o644,
        );
        f.module_file(
            "m",
            &format!("files/srv/new/f{i:03}"),
            &format!("created {i}\n"),
            0o644,
        );
    }
    r.file("srv/dir2file/inside", "was a dir\n");
    r.file("srv/gone/a", "a\n").file("srv/gone/b", "b\n");
    f.module_file(
        "m",
        "scripts/10-shape",
        "rm -rf /srv/dir2file && echo now a file > /srv/dir2file\nrm -rf /srv/gone\n",
        0o755,
    );
}

#[test]
fn an_undo_killed_at_any_point_is_finished_by_the_next_undo() {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).unwrap();
    let mut ns: Vec<usize> = (1..=205).step_by(17).collect();
    ns.extend([2, 100, 101, 102, 201, 202, 203]);
    for n in ns {
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        big_change(&f, &r);
        let before = snapshot_no_mtimes(&r.path.join("srv"));
        let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("dance"));
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = run(disco(&f, &r.path, &f.state())
            .env("DISCO_FAILPOINT", format!("undo-after:{n}"))
            .arg("undo"));
        let aborted = code != 0;
        assert!(
            aborted || n > 200,
            "N={n}: the failpoint did not fire: {err}"
        );
        if aborted {
            assert!(err.contains("aborting the undo"), "N={n}: {err}");
            // A dance must not start on a half-undone root: it finishes the undo.
            let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("undo"));
            assert_eq!(code, 0, "N={n}: {err}");
            assert!(err.contains("an undo of run"), "N={n}: {err}");
        }
        assert_eq!(
            snapshot_no_mtimes(&r.path.join("srv")),
            before,
            "N={n} (aborted: {aborted})"
        );
        assert!(names_with(&r.path, ".disco-undo").is_empty(), "N={n}");
        assert!(names_with(&r.path, ".disco-merge").is_empty(), "N={n}");
    }
}

#[test]
fn a_crash_recovered_merge_undoes_cleanly() {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).unwrap();
    for n in [3, 57, 150] {
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        big_change(&f, &r);
        let before = snapshot_no_mtimes(&r.path.join("srv"));
        let (code, _, _) = run(disco(&f, &r.path, &f.state())
            .env("DISCO_FAILPOINT", format!("merge-after:{n}"))
            .arg("dance"));
        assert_ne!(code, 0);
        let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("dance"));
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("undo"));
        assert_eq!(code, 0, "{err}");
        assert_eq!(snapshot_no_mtimes(&r.path.join("srv")), before, "N={n}");
        assert!(names_with(&r.path, ".disco-undo").is_empty(), "N={n}");
    }
}

#[test]
fn undo_does_not_follow_a_symlink_that_appeared_after_the_dance() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/opt/app/conf", "mine\n", 0o644);
    let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("dance"));
    assert_eq!(code, 0, "{err}");
    // The host's directory, then /opt/app made a link to it.
    let host = f.dir.path().join("host-app");
    fs::create_dir_all(&host).unwrap();
    fs::write(host.join("conf"), "the host's\n").unwrap();
    fs::remove_dir_all(r.path.join("opt/app")).unwrap();
    std::os::unix::fs::symlink(&host, r.path.join("opt/app")).unwrap();
    let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("undo"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("undo: skipped /opt/app/conf: its directory is not the one the dance left (a symbolic link is on its way now)"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(host.join("conf")).unwrap(),
        "the host's\n"
    );
}

#[test]
fn one_root_takes_one_dance_at_a_time_whatever_the_state_dir() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["slow"]).module("slow", "");
    f.module_file("slow", "scripts/10-slow", "sleep 3\n", 0o755);
    let mut first = f.process(&f.dir.path().join("state-a"), &r.path);
    first
        .arg("dance")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut first = first.spawn().unwrap();
    // Until the first dance holds its locks (its status says running).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(f.dir.path().join("state-a/status"))
        .unwrap_or_default()
        .starts_with("running")
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, err) =
        run(disco(&f, &r.path, &f.dir.path().join("state-b")).args(["dance", "--no-wait"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another dance is running (pid "), "{err}");
    assert!(err.contains("/run/disco/root-"), "{err}");
    assert!(first.wait().unwrap().success());
}

#[test]
fn an_empty_noop_does_not_turn_a_configured_noop_off() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "noop = true\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/noop-test", "x\n", 0o644);
    let (code, _, err) = run(disco(&f, &r.path, &f.state()).env("NOOP", "").arg("dance"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing was merged"), "{err}");
    assert!(!r.path.join("etc/noop-test").exists());
}

#[test]
fn a_relative_state_dir_works_and_leaves_no_scratch() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/rel", "x\n", 0o644);
    let (code, _, err) = run(disco(&f, &r.path, Path::new("rel-state"))
        .current_dir(f.dir.path())
        .arg("dance"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(r.read("etc/rel").as_deref(), Some("x\n"));
    let runs: Vec<_> = fs::read_dir(f.dir.path().join("rel-state/run"))
        .unwrap()
        .collect();
    assert!(runs.is_empty());
}

/// A module making a FIFO, a socket, and changing the mode of a char device
/// node of ROOT (which copies the node up).
fn special_files(f: &Fixture, r: &FixtureRoot) {
    f.node("n", &["m"]).module("m", "");
    let bin = f.server().join("modules/m/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(helper("mksock"), bin.join("mksock")).unwrap();
    fs::set_permissions(bin.join("mksock"), fs::Permissions::from_mode(0o755)).unwrap();
    f.module_file(
        "m",
        "scripts/10-special",
        "mkdir -p /srv/special\nmkfifo -m 640 /srv/special/fifo\n\"$DISCO_MODULE_DIR/bin/mksock\" /srv/special/sock\nchmod 600 /srv/special/null\n",
        0o755,
    );
    fs::create_dir_all(r.path.join("srv/special")).unwrap();
    nix::sys::stat::mknod(
        &r.path.join("srv/special/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    fs::set_permissions(
        r.path.join("srv/special/null"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
}

#[test]
fn fifos_sockets_and_devices_merge_on_both_paths() {
    for inside in [false, true] {
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        special_files(&f, &r);
        // Inside ROOT, the layers are in memory and the merge copies.
        let state = if inside {
            r.path.join("var/lib/disco")
        } else {
            f.state()
        };
        let started = Instant::now();
        let (code, _, err) = run(disco(&f, &r.path, &state).env("NOOP", "1").arg("dance"));
        assert_eq!(code, 0, "inside={inside}: {err}");
        assert!(
            err.contains("File: /srv/special/fifo : Created : type=[fifo] mode=[0640]"),
            "{err}"
        );
        assert!(
            err.contains("File: /srv/special/sock : Created : type=[socket]"),
            "{err}"
        );
        assert!(
            err.contains(
                "File: /srv/special/null : Modified : type=[character device] mode=[0666 => 0600]"
            ),
            "{err}"
        );
        let (code, _, err) = run(disco(&f, &r.path, &state).arg("dance"));
        assert_eq!(code, 0, "inside={inside}: {err}");
        assert!(started.elapsed() < Duration::from_secs(60), "no hang");
        let m = |p: &str| fs::symlink_metadata(r.path.join(p)).unwrap();
        assert!(m("srv/special/fifo").file_type().is_fifo());
        assert_eq!(m("srv/special/fifo").mode() & 0o7777, 0o640);
        assert!(m("srv/special/sock").file_type().is_socket());
        assert!(m("srv/special/null").file_type().is_char_device());
        assert_eq!(m("srv/special/null").rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(m("srv/special/null").mode() & 0o7777, 0o600);
        let (code, _, err) = run(disco(&f, &r.path, &state).arg("undo"));
        assert_eq!(code, 0, "inside={inside}: {err}");
        assert!(!r.path.join("srv/special/fifo").exists());
        assert_eq!(m("srv/special/null").mode() & 0o7777, 0o666);
    }
}

#[test]
fn a_latin1_file_name_goes_through_noop_live_and_undo() {
    for inside in [false, true] {
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        f.node("n", &["m"]).module("m", "");
        f.module_file(
            "m",
            "scripts/10-latin1",
            "mkdir -p /srv\necho hi > $'/srv/caf\\xe9'\n",
            0o755,
        );
        let state = if inside {
            r.path.join("var/lib/disco")
        } else {
            f.state()
        };
        let (code, _, err) = run(disco(&f, &r.path, &state).env("NOOP", "1").arg("dance"));
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("File: /srv/caf\\xe9 : Created"), "{err}");
        let (code, _, err) = run(disco(&f, &r.path, &state).arg("dance"));
        assert_eq!(code, 0, "inside={inside}: {err}");
        let name = r.path.join(std::ffi::OsStr::from_bytes(b"srv/caf\xe9"));
        assert_eq!(fs::read_to_string(&name).unwrap(), "hi\n");
        let (code, _, err) = run(disco(&f, &r.path, &state).arg("undo"));
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("removed /srv/caf\\xe9"), "{err}");
        assert!(!name.exists());
    }
}

#[test]
fn a_merge_that_runs_out_of_space_is_rolled_back_and_reported() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    // A small filesystem below ROOT: its own overlay, merged by copying.
    let small = r.path.join("srv/small");
    let _guard = {
        fs::create_dir_all(&small).unwrap();
        nix::mount::mount(
            Some("disco-test-small"),
            &small,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=2m,mode=755"),
        )
        .unwrap();
        MountGuard(small.clone())
    };
    fs::write(small.join("old"), "old\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-fill",
        "echo changed > /srv/small/old\nhead -c 1M /dev/zero > /srv/small/a\nhead -c 1500K /dev/zero > /srv/small/b\n",
        0o755,
    );
    let (code, _, err) =
        run(disco(&f, &r.path, &f.state()).args(["dance", "--detailed-exitcodes"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("error: the merge failed: "), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(fs::read_to_string(small.join("old")).unwrap(), "old\n");
    let left: Vec<_> = fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("old")],
        "no temporary, nothing half-merged"
    );
    assert!(!f.state().join("merging").exists());
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "failed");
    assert!(report["error"]
        .as_str()
        .unwrap()
        .contains("No space left on device"));
    // Once there is room, the next dance goes through.
    f.module_file(
        "m",
        "scripts/10-fill",
        "echo changed > /srv/small/old\nhead -c 1M /dev/zero > /srv/small/a\n",
        0o755,
    );
    let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("dance"));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("interrupted"), "{err}");
    assert_eq!(fs::read_to_string(small.join("old")).unwrap(), "changed\n");
}

#[test]
fn hard_links_holes_and_file_capabilities_keep_their_shape() {
    // security.capability, revision 2, effective, permitted NET_BIND_SERVICE.
    let mut cap = 0x0200_0001u32.to_le_bytes().to_vec();
    for w in [1u32 << 10, 0, 0, 0] {
        cap.extend(w.to_le_bytes());
    }
    let hex: String = cap.iter().map(|b| format!("{b:02x}")).collect();
    for inside in [false, true] {
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        f.node("n", &["m"]).module("m", "");
        f.module_file(
            "m",
            "scripts/10-shape",
            &format!(
                "mkdir -p /srv/shape\necho one > /srv/shape/h1\nln /srv/shape/h1 /srv/shape/h2\ndd if=/dev/zero of=/srv/shape/sparse bs=1 count=1 seek=100M 2>/dev/null\necho bin > /srv/shape/bind\nsetfattr -n security.capability -v 0x{hex} /srv/shape/bind\n"
            ),
            0o755,
        );
        let state = if inside {
            r.path.join("var/lib/disco")
        } else {
            f.state()
        };
        let (code, _, err) = run(disco(&f, &r.path, &state).env("NOOP", "1").arg("dance"));
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("caps=[cap_net_bind_service=ep]"), "{err}");
        let (code, _, err) = run(disco(&f, &r.path, &state).arg("dance"));
        assert_eq!(code, 0, "inside={inside}: {err}");
        let m = |p: &str| fs::symlink_metadata(r.path.join("srv/shape").join(p)).unwrap();
        assert_eq!(m("h1").ino(), m("h2").ino(), "inside={inside}: one inode");
        assert_eq!(m("sparse").len(), 100 * 1024 * 1024 + 1);
        assert!(
            m("sparse").blocks() * 512 < 1024 * 1024,
            "inside={inside}: {} blocks",
            m("sparse").blocks()
        );
        assert_eq!(
            xattr::get(r.path.join("srv/shape/bind"), "security.capability").unwrap(),
            Some(cap.clone())
        );
    }
}

#[test]
fn a_live_change_during_the_dance_is_never_lost() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    r.file("etc/users", "alice\n");
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-carol",
        "echo carol >> /etc/users\nsleep 3\n",
        0o755,
    )
    .module_file("m", "files/etc/other", "o\n", 0o644);
    let users = r.path.join("etc/users");
    let writer = {
        let users = users.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            // The admin, on the live system, while the module sleeps.
            fs::write(&users, "alice\ndave\n").unwrap();
        })
    };
    let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("dance"));
    writer.join().unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: changed on the live system during the dance: /etc/users (merge nothing; the next dance starts over)"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(&users).unwrap(),
        "alice\ndave\n",
        "the host-side write stays"
    );
    assert!(!r.path.join("etc/other").exists(), "nothing merged");
    // The next dance starts over from the live file.
    let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("dance"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(&users).unwrap(), "alice\ndave\ncarol\n");
}

/// `disco undo` with a terminal as stdin, answering `answer`.
fn undo_on_a_terminal(f: &Fixture, root: &Path, answer: &str) -> (bool, String) {
    use std::io::Write;
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut master = fs::File::from(pty.master);
    master.write_all(answer.as_bytes()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_disco"))
        .env_remove("NOOP")
        .arg("--config")
        .arg(f.config())
        .arg("--state-dir")
        .arg(f.state())
        .arg("--root")
        .arg(root)
        .arg("undo")
        .stdin(std::process::Stdio::from(pty.slave))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn undo_asks_on_a_terminal_and_shows_what_it_will_do() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/new", "n\n", 0o644);
    let (code, _, err) = run(disco(&f, &r.path, &f.state()).arg("dance"));
    assert_eq!(code, 0, "{err}");
    let (ok, err) = undo_on_a_terminal(&f, &r.path, "n\n");
    assert!(ok, "{err}");
    assert!(
        err.contains("would remove /etc/new (created by run"),
        "{err}"
    );
    assert!(
        err.contains("[y/N]") && err.contains("undo: nothing was changed"),
        "{err}"
    );
    assert!(r.path.join("etc/new").exists());
    let (ok, err) = undo_on_a_terminal(&f, &r.path, "y\n");
    assert!(ok, "{err}");
    assert!(!r.path.join("etc/new").exists(), "{err}");
}
