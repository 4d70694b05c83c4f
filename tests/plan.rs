//! `disco plan` end to end: order, errors, names, groups.
mod common;

use common::{assert_error, Fixture};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;

#[test]
fn chain_prints_dependencies_first_one_per_line() {
    let f = Fixture::new();
    f.node("n", &["a", "b", "c"])
        .module("a", "after b\n")
        .module("b", "after c\n")
        .module("c", "");
    let (code, out, err) = f.plan("n");
    assert_eq!((code, out.as_str()), (0, "c\nb\na\n"), "stderr: {err}");
}

#[test]
fn diamond_is_ordered_and_ties_break_by_name() {
    let f = Fixture::new();
    f.node("n", &["top"])
        .module("top", "after left\nafter right\n")
        .module("right", "after base\n")
        .module("left", "after base\n")
        .module("base", "");
    f.node("n", &["top", "left", "right", "base"]);
    assert_eq!(f.plan("n").1, "base\nleft\nright\ntop\n");
}

#[test]
fn before_pulls_in_a_module_the_node_did_not_list() {
    let f = Fixture::new();
    f.node("n", &["app"])
        .module(
            "app",
            "# app must run before the monitoring module\nbefore monitor\n",
        )
        .module("monitor", "before report\n")
        .module("report", "")
        .module("unrelated", "");
    assert_eq!(f.plan("n").1, "app\nmonitor\nreport\n");
}

#[test]
fn after_pulls_in_the_whole_chain_and_says_so() {
    // The node lists only `web`; `after` brings in `app`, then `base`.
    let f = Fixture::new();
    f.node("n", &["web"])
        .module("base", "")
        .module("app", "after base\n")
        .module("web", "after app\n")
        .module("unrelated", "");
    let (code, out, err) = f.plan("n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "base\napp\nweb\n");
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("Discovered dependency"))
            .collect::<Vec<_>>(),
        [
            "info: Discovered dependency: web -> app",
            "info: Discovered dependency: app -> base"
        ]
    );
}

#[test]
fn cycle_error_names_every_member() {
    let f = Fixture::new();
    f.node("n", &["a", "b", "c", "d"])
        .module("a", "after b\n")
        .module("b", "after c\n")
        .module("c", "after a\n")
        .module("d", "");
    assert_error(f.plan("n"), "error: module cycle: a -> b -> c -> a");
}

#[test]
fn self_requirement_is_a_cycle() {
    let f = Fixture::new();
    f.node("n", &["a"]).module("a", "after a\n");
    assert_error(f.plan("n"), "error: module cycle: a -> a");
}

#[test]
fn missing_module_names_who_asked_for_it() {
    let f = Fixture::new();
    f.node("n", &["y"]).module("y", "after x\n");
    assert_error(
        f.plan("n"),
        "error: module 'x' (after, in modules/y/requires) is not on the server",
    );
    f.module("y", "before z\n");
    assert_error(
        f.plan("n"),
        "error: module 'z' (before, in modules/y/requires) is not on the server",
    );
    f.node("n", &["ghost"]);
    assert_error(
        f.plan("n"),
        "error: module 'ghost' (listed in parameters/n/modules) is not on the server",
    );
}

#[test]
fn missing_node_is_named() {
    let f = Fixture::new();
    assert_error(
        f.plan("nobody"),
        "error: node 'nobody' has no parameters/nobody on the server",
    );
}

#[test]
fn unknown_directive_names_file_and_line() {
    let f = Fixture::new();
    f.node("n", &["y"])
        .module("y", "after a\n\nrequires b\n")
        .module("a", "");
    assert_error(
        f.plan("n"),
        "error: modules/y/requires:3: expected 'after NAME' or 'before NAME'",
    );
}

#[test]
fn bad_node_names_are_refused() {
    let f = Fixture::new();
    for bad in ["..", "a/b", "a b", ""] {
        let (code, out, err) = f.plan(bad);
        assert_eq!((code, out.as_str()), (1, ""), "{bad:?}");
        assert!(
            err.starts_with(&format!("error: bad name '{bad}' at --node:")),
            "{bad:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1);
    }
}

#[test]
fn bad_module_names_name_the_path() {
    let f = Fixture::new();
    f.node("n", &["ok"]).module("ok", "");
    fs::write(f.server().join("parameters/n/modules/a b"), "").unwrap();
    let (code, _, err) = f.plan("n");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: bad name 'a b' at parameters/n/modules/a b:"),
        "{err}"
    );

    fs::remove_file(f.server().join("parameters/n/modules/a b")).unwrap();
    let raw = f
        .server()
        .join("parameters/n/modules")
        .join(OsStr::from_bytes(b"caf\xe9"));
    fs::write(raw, "").unwrap();
    let (code, _, err) = f.plan("n");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: bad name 'caf\\xe9' at parameters/n/modules/caf"),
        "{err}"
    );
}

#[test]
fn bad_names_in_requires_name_the_line() {
    let f = Fixture::new();
    f.node("n", &["y"]);
    for bad in ["..", "a/b", "../../etc"] {
        f.module("y", &format!("# comment\nafter {bad}\n"));
        let (code, _, err) = f.plan("n");
        assert_eq!(code, 1);
        assert!(
            err.starts_with(&format!("error: bad name '{bad}' at modules/y/requires:2:")),
            "{err}"
        );
    }
}

#[test]
fn groups_add_modules_and_nest() {
    let f = Fixture::new();
    f.node("web1", &["nginx"]).group("web1", "web");
    f.node("web", &["php"]).group("web", "base");
    f.node("base", &["ntp"]);
    f.module("nginx", "after ntp\n")
        .module("php", "after nginx\n")
        .module("ntp", "");
    assert_eq!(f.plan("web1").1, "ntp\nnginx\nphp\n");
}

#[test]
fn group_cycle_is_an_error() {
    let f = Fixture::new();
    f.node("n", &[]).group("n", "g1");
    f.node("g1", &[]).group("g1", "g2");
    f.node("g2", &[]).group("g2", "g1");
    assert_error(f.plan("n"), "error: group cycle: g1 -> g2 -> g1");
}

#[test]
fn missing_group_is_named() {
    let f = Fixture::new();
    f.node("n", &[]).group("n", "nope");
    assert_error(
        f.plan("n"),
        "error: group 'nope' (in parameters/n/groups) has no parameters/nope on the server",
    );
}

#[test]
fn empty_node_plans_nothing() {
    let f = Fixture::new();
    f.node("n", &[]);
    let (code, out, err) = f.plan("n");
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
}

#[test]
fn example_server_layout_plans_from_the_repo_root() {
    let f = Fixture::new();
    let repo = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = common::run(f.disco_without_server().current_dir(repo).args([
        "--server",
        "server-layout",
        "--node",
        "example-node",
        "plan",
    ]));
    assert_eq!(
        (code, out.as_str()),
        (0, "testmodule-1.0\nothermodule-3.2\n"),
        "{err}"
    );
}

#[test]
fn no_server_says_how_to_give_one() {
    let f = Fixture::new();
    let (code, _, err) = common::run(f.disco_without_server().args(["--node", "n", "plan"]));
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "error: no server configured: run `disco init --server URI`, or give --server"
        ),
        "{err}"
    );
}
