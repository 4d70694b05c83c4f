//! `disco param` over fetched parameters and over plain trees.
mod common;

use common::{run, Fixture};
use std::fs;

fn fixture() -> Fixture {
    let f = Fixture::new();
    f.node("web1", &["nginx"]).group("web1", "web");
    f.node("web", &[]);
    f.module("nginx", "");
    f.file("modules/nginx/parameters/port", "80\n")
        .file("modules/nginx/parameters/workers", "2\n")
        .file(
            "modules/nginx/parameters/tls/cert",
            "/etc/ssl/default.pem\n",
        )
        .file("parameters/web/parameters/workers", "8\n")
        .file("parameters/web/parameters/tls/key", "/etc/ssl/web.key\n")
        .file("parameters/web1/parameters/port", "8080\n")
        .file("parameters/web1/parameters/motd", "line one\nline two\n");
    assert_eq!(f.plan("web1").0, 0);
    f
}

fn param(f: &Fixture, args: &[&str]) -> (i32, String, String) {
    run(f.disco().args(["--node", "web1", "param"]).args(args))
}

#[test]
fn layering_module_defaults_then_groups_then_node() {
    let f = fixture();
    assert_eq!(param(&f, &["get", "port"]).1, "8080\n");
    assert_eq!(param(&f, &["get", "workers"]).1, "8\n");
    assert_eq!(param(&f, &["get", "tls/cert"]).1, "/etc/ssl/default.pem\n");
    assert_eq!(param(&f, &["get", "tls/key"]).1, "/etc/ssl/web.key\n");
}

#[test]
fn dump_is_sorted_one_line_per_key() {
    let f = fixture();
    let (code, out, _) = param(&f, &["dump"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "motd = line one\\nline two\nport = 8080\ntls = {}\ntls/cert = /etc/ssl/default.pem\ntls/key = /etc/ssl/web.key\nworkers = 8\n"
    );
    assert_eq!(
        param(&f, &["dump", "tls"]).1,
        "tls = {}\ntls/cert = /etc/ssl/default.pem\ntls/key = /etc/ssl/web.key\n"
    );
}

#[test]
fn keys_lists_children() {
    let f = fixture();
    assert_eq!(param(&f, &["keys"]).1, "motd\nport\ntls\nworkers\n");
    assert_eq!(param(&f, &["keys", "tls"]).1, "cert\nkey\n");
}

#[test]
fn missing_and_bad_keys_are_one_line_errors() {
    let f = fixture();
    common::assert_error(param(&f, &["get", "nope"]), "error: no parameter 'nope'");
    common::assert_error(
        param(&f, &["get", "tls"]),
        "error: parameter 'tls' is a directory: use `disco param keys tls`",
    );
    common::assert_error(
        param(&f, &["get", "/etc/passwd"]),
        "error: bad key '/etc/passwd': keys are relative (no leading '/')",
    );
    let (code, _, err) = param(&f, &["get", "../x"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: bad name '..' at key '../x'"),
        "{err}"
    );
}

#[test]
fn param_without_a_fetch_says_what_to_do() {
    let f = Fixture::new();
    let (code, _, err) = run(f.disco().args(["--node", "n", "param", "get", "x"]));
    assert_eq!(code, 1);
    assert!(err.contains("run `disco plan` first"), "{err}");
}

#[test]
fn cache_of_another_node_is_refused() {
    let f = fixture();
    let (code, _, err) = run(f.disco().args(["--node", "other", "param", "dump"]));
    assert_eq!(code, 1);
    assert!(err.contains("holds node 'web1', not 'other'"), "{err}");
}

#[test]
fn plain_tree_set_get_delete() {
    let f = Fixture::new();
    let t = f.dir.path().join("tree");
    fs::create_dir(&t).unwrap();
    let tree = t.to_str().unwrap();
    let p = |args: &[&str]| run(f.disco().args(["param", "--tree", tree]).args(args));
    let set = run(f
        .disco()
        .args(["param", "--tree", tree, "set", "nginx/port"])
        .write_stdin("8080\n"));
    assert_eq!(set.0, 0, "{}", set.2);
    assert_eq!(p(&["set", "users", "{}"]).0, 0);
    assert_eq!(p(&["set", "users/alice", "admin"]).0, 0);
    assert_eq!(fs::read_to_string(t.join("nginx/port")).unwrap(), "8080\n");
    assert_eq!(p(&["get", "users/alice"]).1, "admin\n");
    assert_eq!(
        p(&["dump"]).1,
        "nginx = {}\nnginx/port = 8080\nusers = {}\nusers/alice = admin\n"
    );
    common::assert_error(
        p(&["delete", "users"]),
        "error: parameter 'users' is a directory; use delete -r to remove it and everything under it",
    );
    assert_eq!(p(&["delete", "-r", "users"]).0, 0);
    assert!(!t.join("users").exists());
    assert_eq!(p(&["delete", "nginx/port"]).0, 0);
    common::assert_error(
        p(&["delete", "nginx/port"]),
        "error: no parameter 'nginx/port'",
    );
    let (code, _, err) = p(&["set", "../escape", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(!f.dir.path().join("escape").exists());
    let leftovers: Vec<_> = fs::read_dir(t.join("nginx")).unwrap().collect();
    assert!(leftovers.is_empty(), "no temporary files left");
}

#[test]
fn set_without_tree_is_refused() {
    let f = fixture();
    let (code, _, err) = param(&f, &["set", "port", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: set and delete change a plain tree: give --tree DIR"),
        "{err}"
    );
}

/// `get KEY` reads only the files on the way to KEY in each layer: for a
/// key at every precedence level, a value or directory in a higher layer
/// replacing the other in a lower one, a symlink inside the tree, a
/// directory, a missing key, a plaintext secret and a fact, it says what
/// `dump KEY` (which merges the whole tree) says.
#[test]
fn get_reads_one_path_and_agrees_with_the_whole_tree() {
    let f = fixture();
    f.node("web1", &["nginx", "app"]);
    f.module("app", "");
    f.file("modules/app/parameters/app/port", "9000\n")
        // A directory at every level: the node's value replaces it.
        .file("modules/app/parameters/shadow/deep/x", "module\n")
        .file("parameters/web/parameters/shadow/deep", "group\n")
        // A value in a module, a directory over it in the group, a key
        // beside it in the node.
        .file("modules/app/parameters/flip", "module\n")
        .file("parameters/web/parameters/flip/a", "group a\n")
        .file("parameters/web1/parameters/flip/b", "node b\n")
        // The group's directory, replaced by the node's value.
        .file("parameters/web/parameters/gone/k", "group\n")
        .file("parameters/web1/parameters/gone", "node\n")
        .file("parameters/web/parameters/secrets/plain", "not sealed\n");
    std::os::unix::fs::symlink("motd", f.server().join("parameters/web1/parameters/alias"))
        .unwrap();
    assert_eq!(f.plan("web1").0, 0);
    let keys = [
        "port",
        "workers",
        "tls/cert",
        "tls/key",
        "tls",
        "motd",
        "alias",
        "app/port",
        "app",
        "shadow/deep",
        "shadow/deep/x",
        "shadow",
        "flip",
        "flip/a",
        "flip/b",
        "gone",
        "gone/k",
        "nope",
        "tls/nope",
        "port/deeper",
        "secrets/plain",
        "secrets",
        "facts/hostname",
        "facts/os_id",
        "facts",
    ];
    for key in keys {
        let (code, got, err) = param(&f, &["get", key]);
        let (dcode, dumped, derr) = param(&f, &["dump", "--show-secrets", key]);
        let first = dumped.lines().next().unwrap_or("");
        // dump --show-secrets warns of every plaintext secret; compare errors.
        let error = |e: &str| {
            e.lines()
                .filter(|l| l.starts_with("error:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if dcode != 0 {
            assert_eq!((code, error(&err)), (dcode, error(&derr)), "{key}");
        } else if first == format!("{key} = {{}}") {
            assert_eq!(
                (code, got.as_str(), error(&err)),
                (
                    1,
                    "",
                    format!(
                        "error: parameter '{key}' is a directory: use `disco param keys {key}`"
                    )
                ),
                "{key}"
            );
        } else {
            assert_eq!(code, 0, "{key}: {err}");
            let shown = got.strip_suffix('\n').unwrap_or(&got).replace('\n', "\\n");
            assert_eq!(format!("{key} = {shown}"), first, "{key}");
        }
    }
    // What the layers say, spelled out.
    let get = |k: &str| param(&f, &["get", k]).1;
    assert_eq!(get("shadow/deep"), "group\n");
    assert_eq!(get("flip/a"), "group a\n");
    assert_eq!(get("flip/b"), "node b\n");
    assert_eq!(get("gone"), "node\n");
    assert_eq!(get("alias"), "line one\nline two\n");
    assert_eq!(get("app/port"), "9000\n");
    common::assert_error(
        param(&f, &["get", "gone/k"]),
        "error: no parameter 'gone/k'",
    );
    common::assert_error(
        param(&f, &["get", "flip"]),
        "error: parameter 'flip' is a directory: use `disco param keys flip`",
    );
    // A plaintext secret: its value, and the warning naming its file.
    let (code, got, err) = param(&f, &["get", "secrets/plain"]);
    assert_eq!((code, got.as_str()), (0, "not sealed\n"), "{err}");
    assert!(
        err.contains("secrets/plain is not encrypted in the server tree (parameters/web/parameters/secrets/plain)"),
        "{err}"
    );
    assert!(!get("facts/hostname").is_empty());
}

/// `get` reads the files on its key's path, not the whole tree: a bad
/// name elsewhere in the fetched cache (which the fetch would have
/// refused) fails `dump`, not `get` of another key.
#[test]
fn get_does_not_read_what_is_off_its_path() {
    let f = fixture();
    let layer = fs::canonicalize(f.cache().join("parameters/web1")).unwrap();
    fs::write(layer.join("parameters/bad name"), "x\n").unwrap();
    assert_eq!(param(&f, &["get", "port"]).1, "8080\n");
    assert_eq!(param(&f, &["get", "tls/key"]).1, "/etc/ssl/web.key\n");
    let (code, _, err) = param(&f, &["dump"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad name"), "{err}");
}
