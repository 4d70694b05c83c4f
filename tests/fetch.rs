//! The fetch stage with the local transport, observed through `disco plan`.
mod common;

use common::{snapshot, Fixture};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};

fn web_fixture() -> Fixture {
    let f = Fixture::new();
    f.node("web1", &["nginx"]).group("web1", "web");
    f.node("web", &["base"]);
    f.node("db1", &["postgres"]);
    f.module("nginx", "after base\n")
        .module("base", "")
        .module("postgres", "")
        .module("unused", "");
    f.file("parameters/web1/parameters/port", "8080\n")
        .file("parameters/db1/parameters/secret", "db only\n")
        .file_mode(
            "modules/nginx/scripts/10-reload",
            "#!/bin/bash\necho hi\n",
            0o750,
        )
        .file_mode("modules/nginx/files/etc/nginx/nginx.conf", "x\n", 0o600);
    symlink(
        "nginx.conf",
        f.server().join("modules/nginx/files/etc/nginx/current"),
    )
    .unwrap();
    f
}

#[test]
fn cache_holds_exactly_the_node_its_groups_and_planned_modules() {
    let f = web_fixture();
    let (code, out, err) = f.plan("web1");
    assert_eq!((code, out.as_str()), (0, "base\nnginx\n"), "{err}");
    let mut top: Vec<String> = fs::read_dir(f.cache().join("parameters"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["web", "web1"]);
    let mut mods: Vec<String> = fs::read_dir(f.cache().join("modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    mods.sort();
    assert_eq!(mods, ["base", "nginx"]);
}

#[test]
fn cache_is_0700_files_keep_mode_symlinks_stay_symlinks() {
    let f = web_fixture();
    assert_eq!(f.plan("web1").0, 0);
    let mode = |p: &str| {
        fs::symlink_metadata(f.cache().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("modules/nginx/scripts/10-reload"), 0o750);
    assert_eq!(mode("modules/nginx/files/etc/nginx/nginx.conf"), 0o600);
    let link = f.cache().join("modules/nginx/files/etc/nginx/current");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(link).unwrap().to_str(), Some("nginx.conf"));
    assert_eq!(
        snapshot(&f.server().join("modules/nginx")),
        snapshot(&f.cache().join("modules/nginx"))
    );
}

#[test]
fn a_failed_fetch_leaves_the_old_cache_intact() {
    let f = web_fixture();
    assert_eq!(f.plan("web1").0, 0);
    let before = snapshot(&f.cache());
    f.module("nginx", "after base\nafter ghost\n");
    let (code, _, err) = f.plan("web1");
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: module 'ghost' (after, in modules/nginx/requires) is not on the server\n"
    );
    assert_eq!(snapshot(&f.cache()), before);
    // (hashes.json is there once a file is older than the racy window.)
    let mut leftovers: Vec<_> = fs::read_dir(f.state())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "hashes.json")
        .collect();
    leftovers.sort();
    assert_eq!(
        leftovers,
        ["cache", "dance.lock", "store"],
        "no half-built cache beside the old one"
    );
}

#[test]
fn a_refetch_replaces_the_cache() {
    let f = web_fixture();
    assert_eq!(f.plan("web1").0, 0);
    f.node("web1", &["nginx", "postgres"]);
    fs::remove_dir_all(f.server().join("parameters/web")).unwrap();
    fs::remove_file(f.server().join("parameters/web1/groups/web")).unwrap();
    let (code, out, err) = f.plan("web1");
    // nginx's `after base` pulls base in.
    assert_eq!(
        (code, out.as_str()),
        (0, "base\nnginx\npostgres\n"),
        "{err}"
    );
    assert!(!f.cache().join("parameters/web").exists());
    assert!(f.cache().join("modules/postgres").is_dir());
    assert!(f.cache().join("modules/base").is_dir());
}

#[test]
fn a_refetch_links_unchanged_files_and_copies_changed_ones() {
    use std::os::unix::fs::MetadataExt;
    let f = web_fixture();
    assert_eq!(f.plan("web1").0, 0);
    let ino = |p: &str| fs::metadata(f.cache().join(p)).unwrap().ino();
    let conf = "modules/nginx/files/etc/nginx/nginx.conf";
    let script = "modules/nginx/scripts/10-reload";
    let (conf_before, script_before) = (ino(conf), ino(script));
    let unit = |m: &str| fs::read_link(f.cache().join("modules").join(m)).unwrap();
    let (base_before, nginx_before) = (unit("base"), unit("nginx"));
    // Same size, new content: the server's mtime tells it changed.
    let on_server = f.server().join(script);
    let old_mtime = fs::metadata(&on_server).unwrap().modified().unwrap();
    fs::write(&on_server, "#!/bin/bash\necho ho\n").unwrap();
    let file = fs::File::options().write(true).open(&on_server).unwrap();
    file.set_modified(old_mtime + std::time::Duration::from_nanos(1))
        .unwrap();
    assert_eq!(f.plan("web1").0, 0);
    assert_eq!(unit("base"), base_before, "an unchanged unit is reused");
    assert_ne!(unit("nginx"), nginx_before, "a changed unit is new");
    let old_unit = f
        .state()
        .join("store")
        .join(nginx_before.file_name().unwrap());
    assert!(old_unit.is_dir(), "kept until the cache stops using it");
    assert_eq!(f.plan("web1").0, 0);
    assert!(!old_unit.exists(), "the next fetch drops the unused unit");
    assert_eq!(ino(conf), conf_before, "an unchanged file is linked");
    assert_ne!(ino(script), script_before, "a changed file is copied");
    assert_eq!(
        fs::read_to_string(f.cache().join(script)).unwrap(),
        "#!/bin/bash\necho ho\n"
    );
    assert_eq!(
        snapshot(&f.server().join("modules/nginx")),
        snapshot(&f.cache().join("modules/nginx"))
    );
}

#[test]
fn module_symlink_inside_the_tree_is_followed() {
    let f = Fixture::new();
    f.node("n", &["alias"]).module("real-1.0", "");
    f.file("modules/real-1.0/files/x", "x\n");
    symlink("real-1.0", f.server().join("modules/alias")).unwrap();
    assert_eq!(f.plan("n").1, "alias\n");
    assert!(f.cache().join("modules/alias/files/x").is_file());
    // A copy in the state dir's store, not a link to the server's tree.
    let real = fs::canonicalize(f.cache().join("modules/alias")).unwrap();
    assert!(
        real.starts_with(fs::canonicalize(f.state().join("store")).unwrap()),
        "{}",
        real.display()
    );
}

#[test]
fn module_symlink_leaving_the_tree_is_refused() {
    let f = Fixture::new();
    f.node("n", &["evil"]);
    let outside = f.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, f.server().join("modules/evil")).unwrap();
    let (code, _, err) = f.plan("n");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: modules/evil is a symlink to "),
        "{err}"
    );
    assert!(
        err.ends_with("outside the server tree; refusing to follow it\n"),
        "{err}"
    );
    assert!(!f.cache().exists());
}

#[test]
fn bad_parameter_key_fails_before_the_cache_is_touched() {
    let f = web_fixture();
    assert_eq!(f.plan("web1").0, 0);
    let before = snapshot(&f.cache());
    f.file("parameters/web1/parameters/bad key", "x\n");
    let (code, _, err) = f.plan("web1");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: bad name 'bad key' at parameters/web1/parameters/bad key:"),
        "{err}"
    );
    assert_eq!(snapshot(&f.cache()), before);
}

#[test]
fn an_unchanged_tree_keeps_the_cache_as_it_is() {
    use std::os::unix::fs::MetadataExt;
    let f = web_fixture();
    assert_eq!(f.plan("web1").0, 0);
    let ino = |p: std::path::PathBuf| fs::symlink_metadata(p).unwrap().ino();
    let before = ino(f.cache().join("fetch.json"));
    assert_eq!(f.plan("web1").0, 0);
    assert_eq!(
        ino(f.cache().join("fetch.json")),
        before,
        "an unchanged tree rewrites nothing"
    );
    f.file("modules/nginx/files/etc/added", "new\n");
    assert_eq!(f.plan("web1").0, 0);
    assert_ne!(
        ino(f.cache().join("fetch.json")),
        before,
        "a change is fetched"
    );
    assert_eq!(
        fs::read_to_string(f.cache().join("modules/nginx/files/etc/added")).unwrap(),
        "new\n"
    );
}
