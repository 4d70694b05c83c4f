//! disco on a real Debian 12 root (`debootstrap --variant=minbase`), as a
//! node is: the state dir inside the root (layers in the scratch image),
//! a server tree kept in git and cloned, a user created by one module and
//! owning a file of the next, facts in a template. Noop changes nothing,
//! live lands it, a second dance changes nothing, undo gives back the
//! pristine root.
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::root::pristine_view;
use common::{git, run, Fixture};

#[test]
fn a_debian_node_goes_noop_live_converged_and_back() {
    let f = Fixture::new();
    let Some(root) = common::debian::root(f.dir.path()) else {
        return; // said why on stderr
    };
    let state = root.join("var/lib/disco");
    fs::create_dir_all(&state).unwrap();
    f.node("n", &["app"])
        .module("users", "")
        .module("app", "after users\n");
    f.module_file(
        "users",
        "scripts/10-svc",
        "getent passwd svc >/dev/null || useradd --system --create-home svc\n",
        0o755,
    );
    f.module_file("app", "files/etc/app/app.conf", "listen=80\n", 0o644)
        .module_file("app", "attributes", "/etc/app/app.conf 0640 root:svc\n", 0o644)
        .module_file(
            "app",
            "templates/etc/motd",
            "echo \"$(disco param get facts/hostname) runs $(disco param get facts/os_id) $(disco param get facts/os_codename)\"\n",
            0o755,
        );
    git(&f.server(), &["init", "-q"]);
    git(&f.server(), &["add", "-A"]);
    git(&f.server(), &["commit", "-qm", "tree"]);
    git(
        f.dir.path(),
        &["clone", "-q", f.server().to_str().unwrap(), "clone"],
    );
    let clone = f.dir.path().join("clone");
    let dance = |noop: bool| {
        let mut c = f.disco_with_state(&state);
        c.arg("--server").arg(&clone);
        if noop {
            c.env("NOOP", "1");
        }
        run(c
            .args(["--node", "n", "--root"])
            .arg(&root)
            .args(["dance", "--detailed-exitcodes"]))
    };
    let pristine = pristine_view(&root);

    let (code, _, err) = dance(true);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("info: Discovered dependency: app -> users"),
        "{err}"
    );
    assert!(
        err.contains(
            "File: /etc/app/app.conf : Created : type=[regular file] mode=[0640] owner=[root:svc]"
        ),
        "{err}"
    );
    assert!(
        err.contains("+n") || err.contains("runs debian bookworm"),
        "{err}"
    );
    assert_eq!(pristine_view(&root), pristine, "noop changed the root");

    let (code, _, err) = dance(false);
    assert_eq!(code, 2, "{err}");
    let conf = fs::metadata(root.join("etc/app/app.conf")).unwrap();
    let svc_gid = fs::read_to_string(root.join("etc/group"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("svc:x:")
                .map(|r| r.split(':').next().unwrap().parse::<u32>().unwrap())
        })
        .expect("svc's group");
    assert_eq!(
        (conf.mode() & 0o7777, conf.uid(), conf.gid()),
        (0o640, 0, svc_gid)
    );
    assert!(fs::read_to_string(root.join("etc/motd"))
        .unwrap()
        .contains("runs debian bookworm"));

    let (code, _, err) = dance(false);
    assert_eq!(code, 0, "the second dance changes nothing: {err}");
    assert!(!err.contains("File: "), "{err}");

    let (code, _, err) = run(f
        .disco_with_state(&state)
        .arg("--root")
        .arg(&root)
        .arg("undo"));
    assert_eq!(code, 0, "{err}");
    // The last dance changed nothing: undo gives back the first live one.
    assert_eq!(
        pristine_view(&root),
        pristine,
        "undo gives back the pristine root"
    );
}
