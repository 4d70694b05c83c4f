//! Modules as sysadmins write them: `requires` pulls modules in, modes and
//! owners come from `attributes` (never from the checkout), only real
//! scripts run, editors' leftovers are refused.
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::root::FixtureRoot;
use common::{git, run, Fixture};

fn live(f: &Fixture, server: &Path, root: &Path) -> (i32, String, String) {
    run(f
        .disco_without_server()
        .arg("--server")
        .arg(server)
        .args(["--node", "n", "--root"])
        .arg(root)
        .arg("dance"))
}

#[test]
fn a_secret_kept_in_git_lands_with_the_mode_and_owner_of_attributes() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["users", "app"])
        .module("users", "")
        .module("app", "after users\n");
    // An earlier module creates the service user; a later one's file is its.
    f.module_file(
        "users",
        "scripts/10-user",
        "grep -q '^svc:' /etc/passwd || { echo 'svc:x:990:990::/:/bin/false' >> /etc/passwd; echo 'svc:x:990:' >> /etc/group; }\n",
        0o755,
    );
    f.module_file("app", "files/etc/app/secret", "s3cret\n", 0o600)
        .module_file("app", "files/etc/app/run", "#!/bin/sh\n", 0o755)
        .module_file("app", "files/etc/app/plain", "p\n", 0o664)
        .module_file("app", "templates/etc/app/motd", "echo hi\n", 0o755)
        .module_file("app", "templates/etc/app/svc.conf", "echo svc\n", 0o644)
        .module_file(
            "app",
            "attributes",
            "# secrets\n/etc/app/secret 0600 root:adm\n/etc/app/svc.conf 0640 svc\n",
            0o644,
        );
    // The server tree as a node gets it: a clone of the admin's git repo.
    git(&f.server(), &["init", "-q"]);
    git(&f.server(), &["add", "-A"]);
    git(&f.server(), &["commit", "-qm", "tree"]);
    let clone = f.dir.path().join("clone");
    git(
        f.dir.path(),
        &["clone", "-q", f.server().to_str().unwrap(), "clone"],
    );
    let (code, _, err) = live(&f, &clone, &r.path);
    assert_eq!(code, 0, "{err}");
    let m = |p: &str| fs::metadata(r.path.join(p)).unwrap();
    assert_eq!(
        (
            m("etc/app/secret").mode() & 0o7777,
            m("etc/app/secret").uid(),
            m("etc/app/secret").gid()
        ),
        (0o600, 0, 4)
    );
    assert_eq!(m("etc/app/run").mode() & 0o7777, 0o755, "executable: 0755");
    assert_eq!(
        m("etc/app/plain").mode() & 0o7777,
        0o644,
        "0644 whatever git kept"
    );
    assert_eq!(
        m("etc/app/motd").mode() & 0o7777,
        0o644,
        "a template's output is 0644"
    );
    assert_eq!(
        (m("etc/app/svc.conf").uid(), m("etc/app/svc.conf").gid()),
        (990, 990)
    );
    assert!(
        err.contains(
            "File: /etc/app/svc.conf : Created : type=[regular file] mode=[0640] owner=[svc:svc]"
        ),
        "owners by name, as the root stands after the earlier module: {err}"
    );
}

#[test]
fn a_bad_attributes_line_is_an_error_before_anything_runs() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-x", "touch /etc/ran\n", 0o755)
        .module_file("m", "files/etc/a", "a\n", 0o644);
    for (line, why) in [
        (
            "/etc/a 0999\n",
            "error: modules/m/attributes:1: mode \"0999\" is not octal (like 0640)",
        ),
        (
            "/etc/b 0600\n",
            "error: modules/m/attributes:1: no file or template of this module makes /etc/b",
        ),
        (
            "/etc/a 0600 nosuchuser\n",
            "error: m: modules/m/attributes:1: no user \"nosuchuser\" in the root's /etc/passwd",
        ),
    ] {
        f.module_file("m", "attributes", line, 0o644);
        let (code, _, err) = live(&f, &f.server(), &r.path);
        assert_eq!(code, 1, "{err}");
        assert!(err.lines().any(|l| l.starts_with(why)), "{line}: {err}");
        assert!(!r.path.join("etc/ran").exists(), "nothing ran");
    }
}

#[test]
fn only_real_scripts_run_and_leftovers_are_refused() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    for name in [
        "README",
        "10-x.sh~",
        ".hidden",
        "20-old.disabled",
        "notes.md",
    ] {
        f.module_file(
            "m",
            &format!("scripts/{name}"),
            "touch /etc/ran-by-mistake\n",
            0o755,
        );
    }
    f.module_file("m", "scripts/30-real", "touch /etc/ran\n", 0o755)
        .module_file(
            "m",
            "handlers/README.txt",
            "touch /etc/handler-ran\n",
            0o755,
        );
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("File: /etc/ran : Created"), "{err}");
    assert!(!err.contains("ran-by-mistake"), "{err}");
    assert!(
        err.contains("warning: m: not run (not a script by its name): scripts/.hidden, scripts/10-x.sh~, scripts/20-old.disabled, scripts/README, scripts/notes.md, handlers/README.txt"),
        "{err}"
    );
    f.module_file("m", "files/etc/foo.conf~", "x\n", 0o644);
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("files/etc/foo.conf~ is an editor's or package manager's leftover"),
        "{err}"
    );
}

#[test]
fn a_step_over_its_time_limit_fails_the_dance_and_nothing_is_merged() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "step_timeout = 2\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/from-m", "x\n", 0o644)
        .module_file(
            "m",
            "scripts/10-hang",
            "(sleep 1000; echo late > /etc/late) &\nsleep 1000\n",
            0o755,
        );
    let started = std::time::Instant::now();
    let (code, _, err) = live(&f, &f.server(), &r.path);
    let took = started.elapsed();
    assert_eq!(code, 1, "{err}");
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    assert!(
        err.contains("error: m: scripts/10-hang: was killed after 2 s (step_timeout); its processes were ended"),
        "{err}"
    );
    assert!(!r.path.join("etc/from-m").exists(), "nothing merged");
    // A module's own limit wins.
    f.module_file("m", "timeout", "1\n", 0o644);
    let (code, _, err) = live(&f, &f.server(), &r.path);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("was killed after 1 s (modules/m/timeout)"),
        "{err}"
    );
}

/// `hostname` and `hostname -s` in a template are answered by the render
/// driver without a process: the same names the real command prints in
/// the same sandbox; anything else, or no `hostname` on PATH, is the real
/// command's business.
#[test]
fn templates_get_the_hostname_from_the_driver_as_the_command_says_it() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "templates/etc/h",
        "echo \"type=$(type -t hostname)\"\n\
         echo \"h=$(hostname) s=$(hostname -s)\"\n\
         echo \"h=$(command hostname) s=$(command hostname -s)\"\n\
         (PATH=/nowhere; hostname) 2>/dev/null; echo \"no-path=$?\"\n\
         hostname -z >/dev/null 2>&1; echo \"bad-option=$? $(command hostname -z >/dev/null 2>&1; echo $?)\"\n\
",
        0o644,
    );
    let (code, out, err) = live(&f, &f.server(), &r.path);
    assert_eq!(code, 0, "{out}{err}");
    let got = fs::read_to_string(r.path.join("etc/h")).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "type=function", "{got}");
    assert_eq!(lines[1], lines[2], "{got}");
    assert!(!lines[1].starts_with("h= "), "{got}");
    assert_eq!(lines[3], "no-path=127", "{got}");
    let bad: Vec<&str> = lines[4]
        .trim_start_matches("bad-option=")
        .split(' ')
        .collect();
    assert!(bad[0] != "0" && bad[0] == bad[1], "{got}");
    // A dotted name (in a UTS namespace of its own, which ends with this
    // bash): `-s` cuts it where the command does.
    let functions = disco::exec::RENDER_DRIVER
        .split_once("\n__disco_i=0")
        .unwrap()
        .0;
    let out = std::process::Command::new("unshare")
        .args(["-u", "bash", "-c"])
        .arg(format!(
            "command hostname a.b.c || exit\n{functions}\n\
             echo \"$(hostname) $(hostname -s) = $(command hostname) $(command hostname -s)\""
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a.b.c a = a.b.c a\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_template_keeps_its_own_shell_status_and_time_limit() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.file("modules/m/parameters/port", "8080\n");
    // t1 changes its shell (errexit, a variable, a function, a trap);
    // t2 must see none of it.
    f.module_file(
        "m",
        "templates/etc/t1",
        "set -e\nX=leak\nf() { :; }\ntrap 'echo trap' EXIT\necho \"0=$0 args=$#\"\necho \"port=$(disco param get port)\"\nprintf 'bare='; disco param get port\n",
        0o644,
    )
    .module_file(
        "m",
        "templates/etc/t2",
        "false\necho \"x=${X-unset} f=$(type -t f || echo none)\"\ncat; echo \"stdin=$?\"\n",
        0o644,
    );
    let (code, out, err) = live(&f, &f.server(), &r.path);
    assert_eq!(code, 0, "{out}{err}");
    let t1 = fs::read_to_string(r.path.join("etc/t1")).unwrap();
    assert!(t1.ends_with("port=8080\nbare=8080\ntrap\n"), "{t1}");
    assert!(
        t1.starts_with("0=/") && t1.contains("/templates/etc/t1 args=0\n"),
        "{t1}"
    );
    assert_eq!(
        fs::read_to_string(r.path.join("etc/t2")).unwrap(),
        "x=unset f=none\nstdin=0\n"
    );

    // What a template leaves running in the background never lands in the
    // next template's output.
    f.module_file(
        "m",
        "templates/etc/t1",
        "{ sleep 0.3; echo tail; } &\necho a\n",
        0o644,
    )
    .module_file("m", "templates/etc/t2", "sleep 0.6; echo b\n", 0o644);
    let (code, out, err) = live(&f, &f.server(), &r.path);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(fs::read_to_string(r.path.join("etc/t2")).unwrap(), "b\n");

    // A failing template ends the module there: the next one is not rendered.
    f.module_file(
        "m",
        "templates/etc/t1",
        "echo \"$(disco param get no/such)\"\n",
        0o644,
    )
    .module_file("m", "templates/etc/t2", "touch /etc/t2-ran\n", 0o644);
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: m: templates/etc/t1: no parameter 'no/such'"),
        "{err}"
    );
    assert!(!err.contains("t2-ran"), "{err}");

    // Each template has its own time limit, and a hung one is killed.
    f.module_file("m", "timeout", "1\n", 0o644)
        .module_file("m", "templates/etc/t1", "sleep 0.7; echo one\n", 0o644)
        .module_file("m", "templates/etc/t2", "sleep 0.7; echo two\n", 0o644)
        .module_file("m", "templates/etc/t3", "sleep 1000 & sleep 1000\n", 0o644);
    let started = std::time::Instant::now();
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert!(
        err.contains("error: m: templates/etc/t3: was killed after 1 s (modules/m/timeout); its processes were ended"),
        "{err}"
    );
}

#[test]
fn a_template_flooding_the_renderers_status_pipe_fails_alone() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    // `$$` is the render bash: its stdout is disco's status pipe.
    f.module_file(
        "m",
        "templates/etc/flood",
        "printf '%*s' 100000 '' > /proc/$$/fd/1\necho ok\n",
        0o644,
    );
    let started = std::time::Instant::now();
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(
        err.contains(
            "error: m: templates/etc/flood: the renderer's status line is not one (over 256 bytes)"
        ),
        "{err}"
    );
}

#[test]
fn later_modules_see_deletions_replacements_and_opaque_dirs_of_earlier_ones() {
    // Five modules, each seeing what the ones before left: whiteouts,
    // a directory replaced (opaque), a file turned into a directory and
    // back, a mode change — the lower stack of module 5 is the squash of
    // modules 1–4.
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    r.file("etc/keep/r1", "root\n")
        .file("etc/keep/r2", "root\n")
        .file("etc/gone", "root\n")
        .file("etc/ftod", "a file\n");
    let mods = ["m1", "m2", "m3", "m4", "m5"];
    f.node("n", &mods);
    let scripts = [
        "rm /etc/gone; mkdir /etc/new; echo 1 > /etc/new/a; rm -rf /etc/keep; mkdir /etc/keep; echo k > /etc/keep/only; rm /etc/ftod; mkdir /etc/ftod; echo z > /etc/ftod/z\n",
        "echo 2 > /etc/new/b; rm /etc/new/a; chmod 700 /etc/new\n",
        "{ ls -A /etc/keep /etc/new /etc/ftod; test -e /etc/gone && echo gone-visible; stat -c %a /etc/new; } > /etc/seen3; rm -rf /etc/ftod\n",
        "test -e /etc/ftod && echo ftod-visible > /etc/seen4; mkdir /etc/ftod; echo again > /etc/ftod/new\n",
        "ls -A /etc/ftod > /etc/seen5; cat /etc/new/b >> /etc/seen5\n",
    ];
    for (i, (m, script)) in mods.iter().zip(scripts).enumerate() {
        let requires = if i > 0 {
            format!("after {}\n", mods[i - 1])
        } else {
            String::new()
        };
        f.module(m, &requires);
        f.module_file(m, "scripts/10-x", script, 0o755);
    }
    let (code, out, err) = live(&f, &f.server(), &r.path);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        fs::read_to_string(r.path.join("etc/seen3")).unwrap(),
        "/etc/ftod:\nz\n\n/etc/keep:\nonly\n\n/etc/new:\nb\n700\n"
    );
    assert!(
        !r.path.join("etc/seen4").exists(),
        "a deleted directory stays deleted"
    );
    assert_eq!(
        fs::read_to_string(r.path.join("etc/seen5")).unwrap(),
        "new\n2\n"
    );
    let names = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(r.path.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("etc/keep"), ["only"]);
    assert_eq!(names("etc/new"), ["b"]);
    assert_eq!(names("etc/ftod"), ["new"]);
    assert!(!r.path.join("etc/gone").exists());
    assert_eq!(
        fs::metadata(r.path.join("etc/new")).unwrap().mode() & 0o7777,
        0o700
    );
}

#[test]
fn noop_is_honoured_by_undo_and_publish() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/new", "n\n", 0o644);
    let (code, _, err) = live(&f, &f.server(), &r.path);
    assert_eq!(code, 0, "{err}");
    let before = common::root::deep_snapshot(&r.path);
    for noop in [true, false] {
        let mut c = f.disco_without_server();
        c.arg("--root").arg(&r.path);
        if noop {
            c.env("NOOP", "true").arg("undo");
        } else {
            c.args(["undo", "--noop"]);
        }
        let (code, _, err) = run(&mut c);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("would remove /etc/new (created by run"),
            "{err}"
        );
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(common::root::deep_snapshot(&r.path), before);
    }
    let served = f.dir.path().join("served");
    let (code, _, err) = run(f
        .disco_without_server()
        .arg("publish")
        .arg(f.server())
        .arg("--root")
        .arg(&served)
        .arg("--noop"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("file(s) differ from current; nothing was changed"),
        "{err}"
    );
    assert!(!served.join("current").exists());
}

#[test]
fn relative_paths_mean_the_current_directory() {
    let f = Fixture::new();
    let _r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/rel", "r\n", 0o644);
    fs::write(f.dir.path().join("rel.toml"), "").unwrap();
    let mut c = assert_cmd::Command::cargo_bin("disco").unwrap();
    c.env_remove("NOOP").current_dir(f.dir.path()).args([
        "--config",
        "rel.toml",
        "--server",
        "server",
        "--state-dir",
        "dd/st",
        "--node",
        "n",
        "--root",
        "root",
        "dance",
    ]);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read_to_string(f.dir.path().join("root/etc/rel")).unwrap(),
        "r\n"
    );
}

#[test]
fn a_killed_dance_reads_as_interrupted() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-slow", "sleep 60\n", 0o755);
    let mut child = f
        .process(&f.state(), &r.path)
        .arg("dance")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !fs::read_to_string(f.state().join("status"))
        .unwrap_or_default()
        .starts_with("running")
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    common::kill_dance(&mut child);
    let (_, _, err) = run(f.disco_without_server().arg("report"));
    assert!(
        err.contains("warning: interrupted: the dance since"),
        "{err}"
    );
    let status = fs::read_to_string(f.state().join("status")).unwrap();
    assert!(status.starts_with("interrupted"), "{status}");
}

#[test]
fn a_missing_parameter_fails_its_step_even_inside_a_substitution() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    // A root without disco's shared libraries: `disco param get` still works.
    let _ = fs::remove_file(r.path.join("usr/lib/x86_64-linux-gnu/libgcc_s.so.1"));
    f.node("n", &["app"]).module("app", "");
    f.file("modules/app/parameters/port", "8080\n");
    f.module_file(
        "app",
        "templates/etc/app/port.conf",
        "echo \"port=$(disco param get port)\"\n",
        0o644,
    )
    .module_file(
        "app",
        "templates/etc/app/secret.conf",
        "echo \"password=$(disco param get db_pass)\"\n",
        0o644,
    );
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("+port=8080"), "{err}");
    assert!(
        err.contains("error: app: templates/etc/app/secret.conf: no parameter 'db_pass'"),
        "{err}"
    );
    assert!(
        !err.contains("File: /etc/app/secret.conf"),
        "nothing written: {err}"
    );
}

#[test]
fn two_modules_defaulting_one_key_is_an_error_and_explain_shows_every_layer() {
    let f = Fixture::new();
    f.node("n", &["nginx", "app"])
        .module("nginx", "")
        .module("app", "");
    f.file("modules/nginx/parameters/listen_port", "80\n")
        .file("modules/app/parameters/listen_port", "8080\n");
    let (code, _, err) = f.plan("n");
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: parameter 'listen_port' has a default in two modules, app and nginx: keep the default in one of them, or move it to the node or a group\n"
    );
    fs::remove_file(f.server().join("modules/app/parameters/listen_port")).unwrap();
    f.group("n", "web")
        .file("parameters/web/parameters/listen_port", "8000\n")
        .file("parameters/n/parameters/listen_port", "8081\n");
    let (code, _, err) = f.plan("n");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        run(f
            .disco_without_server()
            .args(["--node", "n", "param", "explain", "listen_port"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "modules/nginx/parameters/listen_port = 80\nparameters/web/parameters/listen_port = 8000\nparameters/n/parameters/listen_port = 8081   <- wins\n"
    );
}

#[test]
fn only_runs_the_asked_modules_and_what_they_require() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["a", "b", "c"])
        .module("a", "")
        .module("b", "after a\n")
        .module("c", "after b\n");
    for m in ["a", "b", "c"] {
        f.module_file(m, &format!("files/etc/from-{m}"), "x\n", 0o644);
    }
    let (code, _, err) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .args(["dance", "--only", "b"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("info: partial dance (--only b): a,b"), "{err}");
    assert!(r.path.join("etc/from-a").exists() && r.path.join("etc/from-b").exists());
    assert!(!r.path.join("etc/from-c").exists(), "c was not asked for");
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    assert_eq!(report["only"], serde_json::json!(["b"]));
    let (code, _, err) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .args(["dance", "--only", "nope"]));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: --only: module 'nope' is not in this node's plan\n"
    );
}

#[test]
fn shell_module_stands_where_the_module_runs() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["app"])
        .module("base", "")
        .module("app", "after base\n");
    f.module_file("base", "files/etc/from-base", "b\n", 0o644);
    f.file("modules/app/parameters/port", "8080\n");
    let (code, _, err) = f.plan("n");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(f
        .disco_without_server()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .args(["shell", "--module", "app"])
        .write_stdin(
            "echo \"port=$(disco param get port) module=$DISCO_MODULE\"; cat /etc/from-base\n",
        ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("port=8080 module=app"), "{out}{err}");
    assert!(out.contains("b\n"), "base's layer is below: {out}");
    assert!(
        !r.path.join("etc/from-base").exists(),
        "nothing reaches the root"
    );
}

/// Every file below `dir`, its bytes (to grep for a secret).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(all_bytes(&p));
        } else if ft.is_file() {
            out.extend(fs::read(&p).unwrap_or_default());
        }
    }
    out
}

#[test]
fn secrets_never_leave_the_node_in_clear() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let secret = "Hunter2-very-secret";
    f.node("n", &["app"]).module("app", "");
    f.file(
        "parameters/n/parameters/secrets/db_password",
        &format!("{secret}\n"),
    );
    f.module_file(
        "app",
        "templates/etc/app/db.conf",
        "echo \"password=$(disco param get secrets/db_password)\"\n",
        0o644,
    )
    .module_file("app", "attributes", "/etc/app/db.conf 0600\n", 0o644)
    .module_file(
        "app",
        "templates/etc/app/leaky.conf",
        "echo \"oops=$(disco param get secrets/db_password)\"\n",
        0o644,
    )
    .module_file(
        "app",
        "scripts/10-say",
        "echo \"the password is $(disco param get secrets/db_password)\"\n",
        0o755,
    );
    for noop in [true, false] {
        let mut c = f.disco();
        if noop {
            c.env("NOOP", "1");
        }
        let (code, out, err) = run(c.args(["--node", "n", "--root"]).arg(&r.path).arg("dance"));
        assert_eq!(code, 0, "{err}");
        let all = format!("{out}{err}");
        assert!(!all.contains(secret), "the secret was printed: {all}");
        assert!(all.contains("File: /etc/app/db.conf : Created : type=[regular file] mode=[0600] owner=[root:root]"), "{all}");
        assert!(all.contains("+oops=********"), "{all}");
        assert!(all.contains("the password is ********"), "{all}");
        let saved = all_bytes(&f.state());
        assert!(
            !saved.windows(secret.len()).any(|w| w == secret.as_bytes())
                || saved_only_in_params(&f.state(), secret),
            "the secret is in a file of the state dir outside the parameters"
        );
        let m = fs::metadata(f.state().join("reports")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        let m = fs::metadata(f.state().join("reports/last.json")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
    }
    assert_eq!(
        fs::read_to_string(r.path.join("etc/app/db.conf")).unwrap(),
        format!("password={secret}\n"),
        "the node itself gets the value"
    );
}

/// True when `secret` is only in the fetched parameters of the cache
/// (where it must be, 0700) and nowhere else in the state dir.
fn saved_only_in_params(state: &Path, secret: &str) -> bool {
    let reports = all_bytes(&state.join("reports"));
    !reports
        .windows(secret.len())
        .any(|w| w == secret.as_bytes())
}

#[test]
fn many_changes_roll_up_and_diff_full_shows_them_all() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-many",
        "mkdir -p /srv/many/sub\nfor i in $(seq 1 500); do echo $i > /srv/many/f$i; done\necho s > /srv/many/sub/s\nmkdir -p /srv/old\n",
        0o755,
    );
    fs::create_dir_all(r.path.join("srv/olddir/inner")).unwrap();
    for n in ["a", "b", "inner/c"] {
        fs::write(r.path.join("srv/olddir").join(n), "x\n").unwrap();
    }
    f.module_file("m", "scripts/20-rm", "rm -rf /srv/olddir\n", 0o755);
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines().count() < 60,
        "{} lines:\n{err}",
        err.lines().count()
    );
    assert!(
        err.contains("info: /srv/many/** : Created 501 file(s), 2 dir(s)"),
        "{err}"
    );
    let (code, out, _) = run(f.disco_without_server().args(["diff", "--full"]));
    assert_eq!(code, 0);
    assert_eq!(out.matches("File: /srv/many/f").count(), 500);
    assert!(
        out.contains("File: /srv/olddir : Deleted : type=[directory] mode=[0755] owner=[root:root] (3 file(s), 1 dir(s) inside)"),
        "{out}"
    );
    assert!(!out.contains("binary files differ"), "{out}");
    let (_, out, _) = run(f.disco_without_server().args(["diff", "/srv/many/f7"]));
    assert!(out.contains("+7"), "{out}");
    assert_eq!(out.matches("File: ").count(), 1, "{out}");
}

#[test]
fn facts_make_noop_render_what_live_does() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "templates/etc/listen.conf",
        "echo \"listen $(disco param get facts/primary_ipv4) on $(disco param get facts/hostname)\"\n",
        0o644,
    );
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, live) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .arg("dance"));
    assert_eq!(code, 0, "{live}");
    let landed = fs::read_to_string(r.path.join("etc/listen.conf")).unwrap();
    assert!(
        err.contains(&format!("+{}", landed.trim_end())),
        "noop rendered what live did: {err} vs {landed}"
    );
    let (code, out, _) = run(f.disco_without_server().args(["facts", "--json"]));
    assert_eq!(code, 0);
    let facts: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        landed.contains(facts["primary_ipv4"].as_str().unwrap()),
        "{landed}"
    );
}

#[test]
fn noop_network_none_fails_fast_and_host_keeps_off_the_host_loopback() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-net",
        &format!(
            // Only loopback is ever a target: the test's own listener.
            "echo \"network=$DISCO_NOOP_NETWORK\"\nstart=$(date +%s%N)\n(echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo REACHED || echo UNREACHED\nend=$(date +%s%N)\necho \"took $(( (end - start) / 1000000 )) ms\"\n"
        ),
        0o755,
    );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("network=none") && out.contains("UNREACHED"),
        "{out}"
    );
    let ms: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("took "))
        .and_then(|l| l.trim_end_matches(" ms").parse().ok())
        .unwrap();
    assert!(ms < 1000, "connects fail at once: {ms} ms");
    // "host": a namespace of its own routed outward (tests/noop_network.rs),
    // where the host's loopback is not.
    let (code, out, err) = f.noop_dance("n", &r.path, &["--noop-network", "host"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("network=host") && out.contains("UNREACHED"),
        "{out}"
    );
}

#[test]
fn a_full_scratch_fails_the_module_naming_scratch_max() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let state = r.path.join("var/lib/disco");
    fs::create_dir_all(&state).unwrap();
    fs::write(f.config(), format!("scratch_max = {}\n", 64 << 20)).unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-fill",
        "mkdir -p /opt\nhead -c 100M /dev/zero > /opt/big\n",
        0o755,
    );
    let mut c = f.disco_with_state(&state);
    c.arg("--server").arg(f.server()).env("NOOP", "1");
    let (code, _, err) = run(c.args(["--node", "n", "--root"]).arg(&r.path).arg("dance"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: m: the scratch is full (scratch_max = 64.0 MiB): "),
        "{err}"
    );
    assert!(
        fs::symlink_metadata(state.join("scratch.img"))
            .unwrap()
            .len()
            == 64 << 20
    );
}

/// A module creating 20,000 files, `report_max_changes = 100`: the saved
/// report keeps at most 100 changes in full and counts the rest per
/// directory, every change accounted for; the console rolls up as before;
/// `disco diff --full` says the report was capped.
#[test]
fn a_report_keeps_at_most_report_max_changes_and_counts_the_rest() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "report_max_changes = 100\n").unwrap();
    f.node("n", &["many"]).module("many", "");
    f.module_file(
        "many",
        "scripts/10-many",
        "mkdir -p /opt/many/a /opt/many/b\nfor ((i = 0; i < 10000; i++)); do echo $i > /opt/many/a/f$i; echo $i > /opt/many/b/f$i; done\n",
        0o755,
    );
    let (code, _out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    // The console: one roll-up line for the created tree, as before.
    assert!(err.contains("/** : Created 20000 file(s), "), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    let m = &report["modules"][0];
    let kept = m["changes"].as_array().unwrap().len() as u64;
    assert!(kept <= 100, "{kept} changes kept");
    let counted: u64 = m["summarised"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["changes"].as_u64().unwrap())
        .sum();
    assert_eq!(m["summarised_changes"].as_u64().unwrap(), counted);
    // 20,000 files, /opt/many, a, b (and /opt when the fixture root has none).
    let total = kept + counted;
    assert!((20_003..=20_004).contains(&total), "{total} changes");
    let (code, out, err) = run(f.disco().args(["diff", "--full"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("info: many: {total} change(s)")),
        "{out}"
    );
    assert!(out.contains("the report was capped"), "{out}");
    assert!(out.contains("report_max_changes"), "{out}");
    // The history counts every change, not only those kept.
    let (_, out, _) = run(f.disco().args(["report", "--history"]));
    assert!(out.contains(&format!("{total} change(s)")), "{out}");
}

/// The diff streams a module's changes (DESIGN §6): in the order a sort
/// of their paths gives (`d.conf` and `d-x` before what is inside `d/`),
/// and, capped, the report keeps `/etc/` first and then the first paths
/// in that order, as when every change was held and sorted.
#[test]
fn streamed_changes_come_in_path_order_and_the_cap_keeps_etc_first() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["order"]).module("order", "");
    f.module_file(
        "order",
        "scripts/10-order",
        "mkdir -p /opt/o/d /opt/o/d.x /etc/disco-t\nfor p in /opt/o/d/x /opt/o/d.conf /opt/o/d-x /opt/o/d.x/y /opt/o/e /etc/disco-t/a; do echo x > $p; done\n",
        0o755,
    );
    let paths = |f: &Fixture| -> (Vec<String>, u64) {
        let report: serde_json::Value =
            serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap())
                .unwrap();
        let m = &report["modules"][0];
        let kept = m["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap().to_string())
            .collect();
        (kept, m["summarised_changes"].as_u64().unwrap_or(0))
    };
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    let (all, summarised) = paths(&f);
    assert_eq!(summarised, 0);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    for p in [
        "/opt/o/d-x",
        "/opt/o/d.conf",
        "/opt/o/d.x/y",
        "/opt/o/d/x",
        "/etc/disco-t/a",
    ] {
        assert!(all.iter().any(|a| a == p), "{p} in {all:?}");
    }
    fs::write(f.config(), "report_max_changes = 4\n").unwrap();
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    let (kept, summarised) = paths(&f);
    let mut want: Vec<String> = all
        .iter()
        .filter(|p| p.starts_with("/etc/"))
        .cloned()
        .collect();
    want.extend(all.iter().filter(|p| !p.starts_with("/etc/")).cloned());
    want.truncate(4);
    want.sort();
    assert_eq!(kept, want);
    assert_eq!(summarised as usize, all.len() - 4);
}

#[test]
fn data_only_templates_render_as_bash_would_beside_the_others() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.file("modules/m/parameters/port", "8080\n\n")
        .file("modules/m/parameters/m/name", "web\n");
    // Answered by disco (a here-doc, echo lines, a quoted here-doc) and
    // by bash (a variable), in turn, in the order of their paths.
    f.module_file(
        "m",
        "templates/etc/m/a.conf",
        "# a\ncat <<EOF\nport=$(disco param get port)\nname=$(disco param get m/name)\nhost=$(hostname -s) $(hostname)\nEOF\n",
        0o644,
    )
    .module_file(
        "m",
        "templates/etc/m/b.conf",
        "x=1\ncat <<EOF\n$x $(disco param get port)\nEOF\n",
        0o644,
    )
    .module_file(
        "m",
        "templates/etc/m/c.conf",
        "echo \"# c\"\necho \"port=$(disco param get port)\"\n",
        0o644,
    )
    .module_file(
        "m",
        "templates/etc/m/d.conf",
        "cat <<'EOF'\n$(disco param get port) `x` \\\nEOF\n",
        0o644,
    )
    .module_file(
        "m",
        "templates/etc/m/e.conf",
        "cat <<EOF\nport=$(disco param get nope)\nEOF\n",
        0o644,
    );
    let (code, _, err) = live(&f, &f.server(), &r.path);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: m: templates/etc/m/e.conf: no parameter 'nope'"),
        "{err}"
    );
    // The same tree without the failing one lands.
    fs::remove_file(f.server().join("modules/m/templates/etc/m/e.conf")).unwrap();
    let (code, _, err) = live(&f, &f.server(), &r.path);
    assert_eq!(code, 0, "{err}");
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim_end();
    let short = host.split('.').next().unwrap();
    let read = |p: &str| fs::read_to_string(r.path.join(p)).unwrap();
    assert_eq!(
        read("etc/m/a.conf"),
        format!("port=8080\nname=web\nhost={short} {host}\n")
    );
    assert_eq!(read("etc/m/b.conf"), "1 8080\n");
    assert_eq!(read("etc/m/c.conf"), "# c\nport=8080\n");
    assert_eq!(read("etc/m/d.conf"), "$(disco param get port) `x` \\\n");
    assert!(!r.path.join("etc/m/e.conf").exists());
}
