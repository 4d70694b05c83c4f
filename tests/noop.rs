//! Noop dances end to end: the real binary, real overlayfs and namespaces,
//! on fixture roots built by the test; never the host's `/`.
mod common;

use common::root::{deep_snapshot, host_mounts_with, FixtureRoot, MountGuard};
use common::{run, Fixture};
use std::fs;
use std::path::Path;

fn fixture_with_root() -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    (f, r)
}

fn run_dirs(f: &Fixture) -> Vec<String> {
    match fs::read_dir(f.state().join("run")) {
        Ok(e) => e
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn example_noop_prints_hello_the_shim_and_the_rendered_template() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let before = deep_snapshot(&r.path);
    let repo = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = run(f
        .disco_without_server()
        .current_dir(repo)
        .env("NOOP", "true")
        .args([
            "--server",
            "server-layout",
            "--node",
            "example-node",
            "--root",
        ])
        .arg(&r.path)
        .arg("dance"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Hello, disco\n"), "{out}");
    assert!(
        err.contains("info: would skip service postgresql stop (testmodule-1.0 changed nothing)\n"),
        "{err}"
    );
    assert!(err.contains("info: Processing testmodule-1.0\n"));
    assert!(err.contains("info: File: /etc/othermodule/stuff.cfg : Created : type=[regular file] mode=[0644] owner=[root:root] md5=["), "{err}");
    assert!(err.contains("+KEY_VALUE=LOLTHISKEYMEANSNOTHING\n"), "{err}");
    assert!(err.contains("+HOST="), "{err}");
    assert!(
        err.find("Processing testmodule-1.0").unwrap()
            < err.find("Processing othermodule-3.2").unwrap()
    );
    assert_eq!(
        deep_snapshot(&r.path),
        before,
        "ROOT must be byte-identical"
    );
    assert!(run_dirs(&f).is_empty(), "scratch removed");
}

#[test]
fn noop_leaves_root_byte_identical_and_no_mounts() {
    let (f, r) = fixture_with_root();
    r.file("etc/motd", "old motd\n")
        .file("etc/app/app.conf", "port=1\n")
        .file("var/lib/app/state", "s\n");
    xattr::set(r.path.join("etc/motd"), "user.disco-test", b"keep").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/motd", "new motd\n", 0o644)
        .module_file("m", "templates/etc/app/app.conf", "echo port=2\n", 0o755)
        .module_file("m", "attributes", "/etc/app/app.conf 0600\n", 0o644)
        .module_file(
            "m",
            "scripts/10-mess",
            "rm -rf /var/lib/app; chmod 600 /etc/hostname; chown 1:1 /etc/group; ln -s /etc/motd /etc/motd.link\n\
             setfattr() { :; }; touch -d 2001-01-01 /etc/passwd; mkdir -p /opt/new/dir; echo x > /opt/new/dir/f\n",
            0o755,
        );
    let before = deep_snapshot(&r.path);
    let mounts_before = host_mounts_with(f.dir.path().to_str().unwrap());
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        deep_snapshot(&r.path),
        before,
        "ROOT must be byte-identical after a noop dance"
    );
    assert_eq!(
        host_mounts_with(f.dir.path().to_str().unwrap()),
        mounts_before,
        "no mount left on the host"
    );
    assert!(host_mounts_with("overlay")
        .iter()
        .all(|l| !l.contains(f.state().to_str().unwrap())));
    assert!(run_dirs(&f).is_empty(), "scratch removed after success");
    for want in [
        "info: File: /etc/motd : Modified : type=[regular file] mode=[0644] owner=[root:root] md5=[",
        // Not world-readable: a secret, no md5, no diff.
        "info: File: /etc/app/app.conf : Modified : type=[regular file] mode=[0644 => 0600] owner=[root:root]\ncontent changed\n",
        "info: File: /var/lib/app : Deleted : type=[directory] mode=[0755] owner=[root:root]",
        "info: File: /etc/hostname : Modified : type=[regular file] mode=[0644 => 0600] owner=[root:root]",
        "info: File: /etc/group : Modified : type=[regular file] mode=[0644] owner=[root:root => daemon:daemon]",
        "info: File: /etc/motd.link : Created : type=[symbolic link] owner=[root:root] target=[/etc/motd]",
        "info: File: /opt/new : Created : type=[directory]",
        "info: File: /opt/new/dir/f : Created : type=[regular file]",
        "-old motd\n+new motd\n",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(
        !err.contains("File: /etc/passwd"),
        "an mtime-only change is not reported:\n{err}"
    );
}

#[test]
fn identical_template_and_file_are_not_changes() {
    let (f, r) = fixture_with_root();
    r.file("etc/same.conf", "a=1\n")
        .file("etc/same-file", "x\n");
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "templates/etc/same.conf", "echo a=1\n", 0o644)
        .module_file("m", "files/etc/same-file", "x\n", 0o644)
        .module_file(
            "m",
            "scripts/10-rewrite",
            "cp /etc/same.conf /tmp/x; cat /tmp/x > /etc/same.conf\n",
            0o755,
        );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("File:"),
        "nothing changed, nothing reported:\n{err}"
    );
    assert!(err.contains("noop: 0 change(s)"), "{err}");
}

/// A root without bash: the script's module fails in one line that says
/// so, with no `(os error 2)`.
#[test]
fn a_root_without_bash_fails_the_script_saying_so() {
    let (f, r) = fixture_with_root();
    for dir in ["usr/bin", "bin"] {
        let bash = r.path.join(dir).join("bash");
        if fs::symlink_metadata(&bash).is_ok() {
            fs::remove_file(&bash).unwrap();
        }
    }
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-x", "echo hi\n", 0o755);
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("error: m: scripts/10-x: cannot run bash for scripts/10-x: the root has no bash on PATH (/run/disco/bin:"),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
}

#[test]
fn failing_script_stops_the_dance_and_still_reports_what_ran() {
    let (f, r) = fixture_with_root();
    f.node("n", &["a", "b", "c"])
        .module("a", "")
        .module("b", "after a\n")
        .module("c", "after b\n");
    f.module_file("a", "files/etc/from-a", "a\n", 0o644)
        .module_file("b", "scripts/00-ok", "echo b ran > /etc/from-b\n", 0o755)
        .module_file("b", "scripts/10-x", "echo failing; exit 3\n", 0o755)
        .module_file("b", "scripts/20-never", "echo never > /etc/never\n", 0o755)
        .module_file("c", "files/etc/from-c", "c\n", 0o644);
    let before = deep_snapshot(&r.path);
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("error: b: scripts/10-x exited 3\n"), "{err}");
    assert!(err.contains("File: /etc/from-a : Created"), "{err}");
    assert!(err.contains("File: /etc/from-b : Created"), "{err}");
    assert!(
        !err.contains("/etc/never") && !err.contains("Processing c"),
        "{err}"
    );
    assert_eq!(deep_snapshot(&r.path), before);
    // A noop dance's layers live in the scratch image, emptied by the next
    // run: the report keeps what ran.
    assert!(run_dirs(&f).is_empty(), "nothing left beside the report");
    let (code, out, _) = run(f.disco().arg("diff"));
    assert_eq!(code, 0);
    assert!(
        out.contains("File: /etc/from-b : Created")
            && out.contains("that run failed: b: scripts/10-x exited 3"),
        "{out}"
    );
}

#[test]
fn failing_template_writes_nothing_and_names_the_template() {
    let (f, r) = fixture_with_root();
    r.file("etc/t.conf", "old\n");
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "templates/etc/t.conf",
        "echo partial; echo 'error: m: no value for t' >&2; exit 2\n",
        0o644,
    );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{out}{err}");
    // Why, too: its last line on stderr.
    assert!(
        err.contains("error: m: templates/etc/t.conf exited 2; nothing was written (stderr: error: m: no value for t)\n"),
        "{err}"
    );
    assert!(!err.contains("File: /etc/t.conf"), "{err}");
}

#[test]
fn later_modules_see_earlier_layers_and_changes_are_attributed() {
    let (f, r) = fixture_with_root();
    f.node("n", &["first", "second"])
        .module("first", "")
        .module("second", "after first\n");
    f.module_file("first", "files/etc/shared", "one\n", 0o644)
        .module_file("first", "files/etc/gone-later", "tmp\n", 0o644)
        .module_file(
            "second",
            "scripts/10-append",
            "echo two >> /etc/shared; rm /etc/gone-later\n",
            0o755,
        );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let second = &err[err.find("Processing second").unwrap()..];
    let first = &err[..err.find("Processing second").unwrap()];
    assert!(first.contains("File: /etc/shared : Created"), "{first}");
    assert!(second.contains("File: /etc/shared : Modified"), "{second}");
    assert!(second.contains(" one\n+two\n"), "{second}");
    assert!(
        second.contains("File: /etc/gone-later : Deleted"),
        "{second}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    assert_eq!(
        report["modules"][1]["changes"][0]["path"],
        "/etc/gone-later"
    );
}

#[test]
fn replaced_directories_symlink_retarget_and_binary_files() {
    let (f, r) = fixture_with_root();
    r.file("srv/dir-to-file/inner", "i\n")
        .file("srv/file-to-dir", "f\n")
        .file("srv/bin.dat", "x");
    fs::create_dir_all(r.path.join("srv/opaque")).unwrap();
    r.file("srv/opaque/old", "o\n");
    std::os::unix::fs::symlink("a", r.path.join("srv/link")).unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-x",
        "rm -rf /srv/dir-to-file && echo now-a-file > /srv/dir-to-file\n\
         rm /srv/file-to-dir && mkdir /srv/file-to-dir\n\
         rm -rf /srv/opaque && mkdir /srv/opaque && echo new > /srv/opaque/new\n\
         ln -sfn b /srv/link\n\
         printf '\\000\\001' > /srv/bin.dat\n",
        0o755,
    );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "File: /srv/dir-to-file : Replaced : type=[directory => regular file]",
        "File: /srv/file-to-dir : Replaced : type=[regular file => directory]",
        "File: /srv/opaque : Replaced : type=[directory]",
        "File: /srv/opaque/new : Created",
        "File: /srv/link : Modified : type=[symbolic link] owner=[root:root] target=[a => b]",
        "File: /srv/bin.dat : Modified",
        "binary files differ",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(
        !err.contains("/srv/opaque/old"),
        "the old content of a replaced dir is not listed:\n{err}"
    );
}

#[test]
fn environment_and_param_get_inside_the_sandbox() {
    let (f, r) = fixture_with_root();
    f.node("n", &["m"]).module("m", "");
    f.file("modules/m/parameters/port", "80\n")
        .file("parameters/n/parameters/port", "8080\n");
    f.module_file(
        "m",
        "scripts/10-env",
        "echo \"NOOP=$NOOP NODE=$DISCO_NODE MODULE=$DISCO_MODULE\"\n\
         echo \"PORT=$(disco param get port)\"\n\
         ls $DISCO_MODULE_DIR/scripts\n\
         touch $DISCO_MODULE_DIR/x 2>/dev/null || echo module-dir-read-only\n\
         touch $DISCO_PARAMS/x 2>/dev/null || echo params-read-only\n",
        0o755,
    );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("NOOP=true NODE=n MODULE=m\nPORT=8080\n10-env\nmodule-dir-read-only\nparams-read-only\n"), "{out}");
}

#[test]
fn keep_keeps_scratch_and_diff_prints_the_report_again() {
    let (f, r) = fixture_with_root();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/kept", "k\n", 0o644);
    let (code, _, err) = f.noop_dance("n", &r.path, &["--keep"]);
    assert_eq!(code, 0, "{err}");
    let runs = run_dirs(&f);
    assert_eq!(runs.len(), 1);
    assert!(f
        .state()
        .join("run")
        .join(&runs[0])
        .join("u/1-0/etc/kept")
        .is_file());
    let (code, out, _) = run(f.disco().arg("diff"));
    assert_eq!(code, 0);
    assert!(out.contains("info: File: /etc/kept : Created : type=[regular file] mode=[0644] owner=[root:root] md5=["), "{out}");
    assert!(out.contains("+k\n"));
}

#[test]
fn separately_mounted_filesystem_is_overlaid_not_written() {
    let (f, r) = fixture_with_root();
    let data = r.path.join("srv/data");
    let _guard = MountGuard::tmpfs(&data);
    fs::write(data.join("existing"), "real\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-w",
        "echo new > /srv/data/new; echo changed > /srv/data/existing\n",
        0o755,
    );
    let before = deep_snapshot(&data);
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("File: /srv/data/new : Created"), "{err}");
    assert!(err.contains("File: /srv/data/existing : Modified"), "{err}");
    assert_eq!(
        deep_snapshot(&data),
        before,
        "the real filesystem under ROOT is untouched"
    );
    assert!(!data.join("new").exists());
}

#[test]
fn background_processes_are_killed_with_the_sandbox_and_reported() {
    let (f, r) = fixture_with_root();
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-bg",
        "setsid sleep 7777 >/dev/null 2>&1 < /dev/null &\nsleep 0.3\necho started\n",
        0o755,
    );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(
            "warning: m: killed 1 background process(es) its steps left running: sleep 7777"
        ),
        "{err}"
    );
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "sleep 7777"])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "no sleep 7777 left on the host");
}

#[test]
fn target_through_a_symlink_leaving_root_is_refused() {
    let (f, r) = fixture_with_root();
    std::os::unix::fs::symlink("../../../../../../../../outside", r.path.join("etc/evil")).unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/evil/x", "x\n", 0o644);
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("error: m: files/etc/evil: /etc/evil leads outside the root (through '..' or the symlink /etc/evil)"), "{err}");
}

#[test]
fn module_fifo_is_refused() {
    let (f, r) = fixture_with_root();
    f.node("n", &["m"]).module("m", "");
    fs::create_dir_all(f.server().join("modules/m/files/etc")).unwrap();
    nix::unistd::mkfifo(
        &f.server().join("modules/m/files/etc/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "error: server {}: modules/m/files/etc/pipe is a fifo; a server tree may hold only regular files, directories and symlinks\n",
            f.server().display()
        )
    );
}

#[test]
fn non_root_is_refused() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(common::disco_for_anyone(dir.path()));
    cmd.uid(65534).gid(65534).env("NOOP", "1").args([
        "--config",
        "/dev/null",
        "--node",
        "n",
        "--server",
        "/nonexistent",
        "dance",
    ]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: disco dance must run as root: it mounts overlays and enters namespaces\n"
    );
}

#[test]
fn shell_demo_reports_deleted_modified_created_and_leaves_root() {
    let (f, r) = fixture_with_root();
    let before = deep_snapshot(&r.path);
    let (code, out, err) = run(f
        .disco_without_server()
        .arg("--root")
        .arg(&r.path)
        .arg("shell")
        .write_stdin(
            "rm -f /etc/passwd\necho 'root:$6$x:1::::::' > /etc/shadow\ntouch /bin/myhotbash\n",
        ));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(
            "info: File: /etc/passwd : Deleted : type=[regular file] mode=[0644] owner=[root:root]"
        ),
        "{err}"
    );
    // Not world-readable: a secret, reported without md5 or diff.
    assert!(err.contains("info: File: /etc/shadow : Modified : type=[regular file] mode=[0640] owner=[root:root]\ncontent changed\n"), "{err}");
    assert!(err.contains("info: File: /usr/bin/myhotbash : Created : type=[regular file] mode=[0644] owner=[root:root]"), "{err}");
    assert_eq!(deep_snapshot(&r.path), before);
    assert!(Path::new(&r.path.join("etc/passwd")).exists());
}

/// `disco pending TEXT`: a change a noop sandbox cannot make (a package
/// install without a network) counts as one — said, counted, exit 2 with
/// --detailed-exitcodes, the module's deferred actions and handlers "would"
/// run — and a live dance whose step leaves one pending fails.
#[test]
fn pending_changes_count_in_noop_and_fail_a_live_dance() {
    let (f, r) = fixture_with_root();
    f.node("n", &["pkg"]).module("pkg", "");
    f.module_file(
        "pkg",
        "scripts/10-install",
        "if [ \"$NOOP\" = true ]; then disco pending 'install hello 2.10-3'; disco pending \"remove   old\nline\"; fi\n\
         systemctl restart hello\n",
        0o755,
    )
    .module_file("pkg", "handlers/10-h", "true\n", 0o755);
    let before = deep_snapshot(&r.path);
    let (code, out, err) = f.noop_dance("n", &r.path, &["--detailed-exitcodes"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(
            "info: pkg: pending, not made in this noop: install hello 2.10-3; remove   old line\n"
        ),
        "{err}"
    );
    assert!(
        err.contains("warning: would execute: systemctl restart hello"),
        "{err}"
    );
    assert!(
        err.contains("info: would run handler pkg/handlers/10-h"),
        "{err}"
    );
    assert!(
        err.contains("info: noop: 0 change(s), 2 pending (not made in noop) and 1 deferred action(s) in 1 module(s)"),
        "{err}"
    );
    assert_eq!(deep_snapshot(&r.path), before);
    let report = fs::read_to_string(f.state().join("reports/last.json")).unwrap();
    assert!(report.contains("\"install hello 2.10-3\""), "{report}");

    // Without a pending change the noop is converged: exit 0.
    f.module_file("pkg", "scripts/10-install", "true\n", 0o755);
    let (code, _, err) = f.noop_dance("n", &r.path, &["--detailed-exitcodes"]);
    assert_eq!(code, 0, "{err}");

    // A live dance makes its changes; one left pending fails it, unmerged.
    f.module_file(
        "pkg",
        "scripts/10-install",
        "echo x > /etc/pkg.conf; disco pending 'install hello'\n",
        0o755,
    );
    let (code, _, err) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .arg("dance"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: pkg: a step left changes pending in a live dance (install hello): `disco pending` is for noop runs"),
        "{err}"
    );
    assert!(!r.path.join("etc/pkg.conf").exists());

    // The list is the module's to write, so it is read as untrusted: a
    // fifo in its place fails the module at once, no hang.
    f.module_file(
        "pkg",
        "scripts/10-install",
        "rm -f /run/disco/queue/pending; mkfifo /run/disco/queue/pending\n",
        0o755,
    );
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("was replaced by a fifo; it is refused"),
        "{err}"
    );
}

/// `--keep` keeps what `--help` says: the layers, in the run dir, even
/// when they were in the scratch image (state dir inside the root, as on
/// a node), which the next run empties.
#[test]
fn keep_keeps_the_layers_of_the_scratch_image_in_the_run_dir() {
    let (f, r) = fixture_with_root();
    let state = r.path.join("var/lib/disco");
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/kept", "k\n", 0o644)
        .module_file("m", "scripts/10-rm", "rm /etc/hostname\n", 0o755);
    let dance = |args: &[&str]| {
        run(f
            .disco_with_state(&state)
            .env("NOOP", "true")
            .arg("--server")
            .arg(f.server())
            .args(["--node", "n", "--root"])
            .arg(&r.path)
            .arg("dance")
            .args(args))
    };
    let (code, _, err) = dance(&["--keep"]);
    assert_eq!(code, 0, "{err}");
    let runs: Vec<_> = fs::read_dir(state.join("run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        err.contains(&format!("info: scratch kept in {}\n", runs[0].display())),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(runs[0].join("u/1-0/etc/kept")).unwrap(),
        "k\n"
    );
    let whiteout = fs::symlink_metadata(runs[0].join("u/1-0/etc/hostname")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&whiteout.file_type()),
        "the deletion is kept as overlayfs' whiteout"
    );
    assert!(!runs[0].join("mem").exists(), "out of the image");
    // The next run (it empties the image) leaves the kept layers alone.
    let (code, _, err) = dance(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(runs[0].join("u/1-0/etc/kept").is_file());
}

#[test]
fn a_shell_whose_requirement_fails_leaves_no_run_dir() {
    let (f, r) = fixture_with_root();
    f.node("n", &["a", "b"])
        .module("a", "")
        .module("b", "after a\n");
    f.module_file("a", "scripts/10-fail", "exit 3\n", 0o755);
    // The shell works from the cache of the last fetch.
    assert_eq!(f.noop_dance("n", &r.path, &[]).0, 1);
    assert!(run_dirs(&f).is_empty());
    let (code, _, err) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .args(["shell", "--module", "b"])
        .write_stdin("true\n"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: a: scripts/10-fail exited 3 (required by b; no shell)"),
        "{err}"
    );
    assert!(run_dirs(&f).is_empty(), "no run dir outlives the shell");
}
