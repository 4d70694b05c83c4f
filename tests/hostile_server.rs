//! A hostile or broken server cannot hang, exhaust or fool a node: a
//! stand-in `disco serve` (`examples/fake_serve.rs`) behind a real sshd
//! misbehaves one way per key; hostile local server trees; and the real
//! `disco serve` with a file over the node's size limit.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::sshd::{forced, keygen, Sshd};
use common::{run, snapshot, Fixture};

/// The stand-in server, built by `cargo test` as an example.
fn fake_serve() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    let p = debug.join("examples/fake_serve");
    assert!(p.exists(), "{} is built by cargo test", p.display());
    p
}

const MODES: &[&str] = &[
    "hang-after-hello",
    "hang-in-listing",
    "hang-in-data",
    "bad-md5",
    "content-mismatch",
    "dotdot",
    "forged-text",
];

struct Setup {
    f: Fixture,
    sshd: Sshd,
    keys: PathBuf,
}

/// A server tree for node `n` (one module with a file), an sshd with one
/// key per misbehaviour plus one for the real `disco serve`.
fn setup() -> Setup {
    let f = Fixture::new();
    f.node("n", &["m"]).module("m", "");
    f.file("modules/m/files/etc/m.conf", "the content\n");
    let keys = f.dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let mut lines = Vec::new();
    for mode in MODES {
        let public = keygen(&keys.join(mode));
        lines.push(format!(
            "command=\"{} {mode} --root {}\",restrict {public}",
            fake_serve().display(),
            f.server().display()
        ));
    }
    let public = keygen(&keys.join("real"));
    lines.push(forced(&public, &f.server(), Some("n")));
    let sshd = Sshd::start(&f.dir.path().join("sshd"), &lines);
    Setup { f, sshd, keys }
}

/// `disco plan` over ssh with `key`, a 2 s `io_timeout`; the first cache
/// (from the real server) must survive whatever happens.
fn plan_with(s: &Setup, key: &str, extra: &str) -> (i32, String, String, Duration) {
    // The real server is a debug build here: give it time to hash big files;
    // the stand-ins that hang get 2 s of silence; the others, which answer,
    // 10 s (a loaded CI machine can take over 2 s to start one over ssh).
    let io = match key {
        "real" => 30,
        k if k.starts_with("hang") => 2,
        _ => 10,
    };
    fs::write(
        s.f.config(),
        s.sshd.client_config(&s.keys.join(key)) + &format!("io_timeout = {io}\n") + extra,
    )
    .unwrap();
    let started = Instant::now();
    let (code, out, err) = run(s
        .f
        .disco_without_server()
        .args(["--server", &s.sshd.uri(&s.f.server().display().to_string())])
        .args(["--node", "n", "plan"])
        .timeout(Duration::from_secs(60)));
    (code, out, err, started.elapsed())
}

#[test]
fn a_misbehaving_server_fails_the_fetch_fast_and_keeps_the_cache() {
    let s = setup();
    let (code, _, err, _) = plan_with(&s, "real", "");
    assert_eq!(code, 0, "{err}");
    let good = snapshot(&s.f.cache());
    // The tree changes: every stand-in now has something to send.
    s.f.file("modules/m/files/etc/new.conf", "new\n");
    let uri = s.sshd.uri(&s.f.server().display().to_string());
    for (mode, expected) in [
        ("hang-after-hello", format!("error: server {uri} sent nothing for 2 s")),
        ("hang-in-listing", format!("error: server {uri} sent nothing for 2 s")),
        ("hang-in-data", format!("error: server {uri} sent nothing for 2 s")),
        ("bad-md5", format!("error: server {uri}: the server sent a bad entry for modules/m/files/etc/")),
        ("content-mismatch", format!("error: server {uri}: modules/m/files/etc/new.conf does not match its hash after the transfer")),
        ("dotdot", format!("error: server {uri}: ")),
    ] {
        let (code, out, err, took) = plan_with(&s, mode, "");
        assert_eq!(code, 1, "{mode}: {out}{err}");
        assert!(took < Duration::from_secs(15), "{mode}: took {took:?}");
        assert!(err.starts_with(&expected), "{mode}: {err}");
        assert_eq!(err.lines().count(), 1, "{mode}: one line: {err}");
        assert_eq!(snapshot(&s.f.cache()), good, "{mode}: the old cache is intact");
    }
}

#[test]
fn server_text_cannot_forge_lines_or_escape_the_terminal() {
    let s = setup();
    let (code, out, err, _) = plan_with(&s, "forged-text", "");
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{:?}",
        err.lines()
            .map(|l| &l[..l.len().min(80)])
            .collect::<Vec<_>>()
    );
    assert!(!err.contains('\x1b'), "{err:?}");
    // The newline folded, the escape shown, not obeyed.
    assert!(
        err.contains("no error: everything is fine\\x1b[2J"),
        "{err}"
    );
    assert!(
        err.len() < 5000,
        "an overlong message is cut: {} bytes",
        err.len()
    );
    assert!(err.trim_end().ends_with('…'), "{err}");
}

#[test]
fn a_file_over_max_file_size_is_refused_by_name_without_a_hang() {
    let s = setup();
    let big = s.f.server().join("modules/m/files/srv/big");
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    let f = fs::File::create(&big).unwrap();
    f.set_len(64 << 20).unwrap(); // sparse
    let (code, out, err, took) = plan_with(&s, "real", "max_file_size = 1048576\n");
    assert_eq!(code, 1, "{out}{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        err.contains("modules/m/files/srv/big is 64.0 MiB, over max_file_size (1.0 MiB); refused"),
        "{err}"
    );
    // The local transport says the same.
    fs::write(s.f.config(), "max_file_size = 1048576\n").unwrap();
    let (code, _, err) = run(s.f.disco().args(["--node", "n", "plan"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("modules/m/files/srv/big is 64.0 MiB, over max_file_size (1.0 MiB)"),
        "{err}"
    );
}

#[test]
fn big_sparse_files_keep_their_holes_on_both_transports() {
    let s = setup();
    let big = s.f.server().join("modules/m/files/srv/sparse");
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    let f = fs::File::create(&big).unwrap();
    f.set_len(256 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"end", (256 << 20) - 3).unwrap();
    let blocks = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&fs::metadata(p).unwrap()) * 512;
    let (code, _, err, _) = plan_with(&s, "real", "");
    assert_eq!(code, 0, "{err}");
    let cached = s.f.cache().join("modules/m/files/srv/sparse");
    assert_eq!(fs::metadata(&cached).unwrap().len(), 256 << 20);
    assert!(
        blocks(&cached) < 1 << 20,
        "ssh: {} bytes of blocks",
        blocks(&cached)
    );
    fs::write(s.f.config(), "").unwrap();
    let (code, _, err) = run(s.f.disco().args(["--node", "n", "plan"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        blocks(&cached) < 1 << 20,
        "local: {} bytes of blocks",
        blocks(&cached)
    );
}

/// `disco plan` on a local tree: (code, stderr, seconds).
fn local_plan(f: &Fixture) -> (i32, String, f64) {
    let started = Instant::now();
    let (code, _, err) = run(f
        .disco()
        .args(["--node", "n", "plan"])
        .timeout(Duration::from_secs(30)));
    (code, err, started.elapsed().as_secs_f64())
}

#[test]
fn links_and_special_files_of_the_tree_are_never_followed() {
    // requires → /dev/zero: refused, not read until memory runs out.
    let f = Fixture::new();
    f.node("n", &["m"]);
    fs::create_dir_all(f.server().join("modules/m")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", f.server().join("modules/m/requires")).unwrap();
    let (code, err, secs) = local_plan(&f);
    assert_eq!(code, 1);
    assert!(secs < 10.0);
    assert_eq!(
        err,
        "error: modules/m/requires is a symbolic link; it must be a regular file\n"
    );
    // A FIFO requires: refused, no hang.
    fs::remove_file(f.server().join("modules/m/requires")).unwrap();
    nix::unistd::mkfifo(
        &f.server().join("modules/m/requires"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let (code, err, secs) = local_plan(&f);
    assert_eq!(code, 1);
    assert!(secs < 10.0);
    assert_eq!(
        err,
        "error: modules/m/requires is a fifo; it must be a regular file\n"
    );
    // parameters/N/modules → /etc: never lists the client's /etc.
    fs::remove_file(f.server().join("modules/m/requires")).unwrap();
    fs::remove_dir_all(f.server().join("parameters/n/modules")).unwrap();
    std::os::unix::fs::symlink("/etc", f.server().join("parameters/n/modules")).unwrap();
    let (code, err, _) = local_plan(&f);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: parameters/n/modules is a symbolic link; it must be a directory\n"
    );
}

#[test]
fn a_handlers_link_to_etc_is_refused_not_listed() {
    let f = Fixture::new();
    let r = common::root::FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/h.conf", "x\n", 0o644);
    std::os::unix::fs::symlink("/etc", f.server().join("modules/m/handlers")).unwrap();
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: module m: handlers/ is a symbolic link; it must be a directory"),
        "{err}"
    );
}

#[test]
fn deep_nesting_is_refused_fast() {
    let f = Fixture::new();
    let r = common::root::FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    // Built relative, one level at a time: the path is longer than PATH_MAX.
    let mut dir = fs::File::open(f.server().join("modules/m")).unwrap();
    let mut first = true;
    for _ in 0..1001 {
        let name = if first { "files" } else { "d" };
        first = false;
        nix::sys::stat::mkdirat(
            Some(std::os::fd::AsRawFd::as_raw_fd(&dir)),
            name,
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .unwrap();
        let fd = nix::fcntl::openat(
            Some(std::os::fd::AsRawFd::as_raw_fd(&dir)),
            name,
            nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        // SAFETY: openat just returned this descriptor; we own it alone.
        dir = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    }
    let started = Instant::now();
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("more than 256 levels of directories"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn file_names_and_contents_cannot_forge_lines() {
    let f = Fixture::new();
    let r = common::root::FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-evil",
        "printf 'ok\\n\\033[3A\\033[J' > /etc/sudoers-ish\ntouch $'/etc/evil\\ninfo: noop: 0 change(s)'\n",
        0o755,
    );
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
    assert!(err.contains("+\\x1b[3A\\x1b[J"), "{err}");
    assert!(
        err.contains("File: /etc/evil\\x0ainfo: noop: 0 change(s) : Created"),
        "{err}"
    );
    assert!(
        !err.lines().any(|l| l == "info: noop: 0 change(s)"),
        "{err}"
    );
}

#[test]
fn report_history_is_bounded_in_bytes() {
    let f = Fixture::new();
    let r = common::root::FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/x", "x\n", 0o644);
    fs::write(f.config(), "report_history_bytes = 1\n").unwrap();
    for _ in 0..3 {
        let (code, _, err) = f.noop_dance("n", &r.path, &[]);
        assert_eq!(code, 0, "{err}");
        std::thread::sleep(Duration::from_millis(1100)); // run ids have seconds
    }
    let runs: Vec<_> = fs::read_dir(f.state().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "last.json")
        .collect();
    assert_eq!(runs.len(), 1, "only the newest is kept: {runs:?}");
}

#[test]
fn a_snapshot_published_by_root_is_served_to_the_serving_user() {
    let f = Fixture::new();
    f.node("n", &["m"]).module("m", "");
    // 0644, as git checks it out: publish copies only what the serving
    // user could read before (a root-only file is refused, tests/publish.rs).
    f.file("modules/m/files/etc/m.conf", "c\n");
    fs::set_permissions(
        f.server().join("modules/m/files/etc/m.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    // The served directory belongs to the serving user (a uid with no
    // passwd entry: nothing is added to the host), and to nobody else.
    let served = f.dir.path().join("served");
    fs::create_dir(&served).unwrap();
    std::os::unix::fs::chown(&served, Some(45678), Some(45678)).unwrap();
    fs::set_permissions(&served, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // The serving user must reach the served directory.
    fs::set_permissions(
        f.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (code, _, err) = run(f
        .disco_without_server()
        .arg("publish")
        .arg(f.server())
        .arg("--root")
        .arg(&served));
    assert_eq!(code, 0, "{err}");
    // Every entry of snapshots/ is the serving user's alone.
    fn walk(p: &Path) {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid()), (45678, 45678), "{}", p.display());
        if m.file_type().is_symlink() {
            return;
        }
        assert_eq!(m.mode() & 0o077, 0, "{} is {:o}", p.display(), m.mode());
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path());
            }
        }
    }
    walk(&served.join("snapshots"));
    let keys = f.dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let public = keygen(&keys.join("k"));
    let line = format!(
        "command=\"setpriv --reuid 45678 --regid 45678 --clear-groups {} serve --root {} --node n\",restrict {public}",
        // The serving user may not reach target/ (a checkout in a 0700 directory).
        common::disco_for_anyone(f.dir.path()).display(),
        served.display()
    );
    let sshd = Sshd::start(&f.dir.path().join("sshd"), &[line]);
    fs::write(f.config(), sshd.client_config(&keys.join("k"))).unwrap();
    let (code, out, err) = run(f
        .disco_without_server()
        .args(["--server", &sshd.uri(&served.display().to_string())])
        .args(["--node", "n", "plan"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "m\n");
    assert_eq!(
        fs::read_to_string(f.cache().join("modules/m/files/etc/m.conf")).unwrap(),
        "c\n"
    );
}
