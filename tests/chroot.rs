//! disco run inside a chroot (an image being built, a rescue system): the
//! real Debian root, bind-mounted onto itself in a private mount namespace
//! of the test, with /proc, /sys, /dev, and disco dancing there with no
//! `--root`. Its handlers must run in that chroot — rejoining the host's
//! mount namespace (so daemons outlive disco) used to leave it for the
//! host's `/`.
mod common;

use std::fs;
use std::process::Command;

use common::Fixture;

#[test]
fn a_dance_inside_a_chroot_runs_its_handlers_inside_it() {
    let f = Fixture::new();
    let Some(root) = common::debian::root(f.dir.path()) else {
        return; // said why on stderr
    };
    fs::copy(
        env!("CARGO_BIN_EXE_disco"),
        root.join("usr/local/bin/disco"),
    )
    .unwrap();
    let server = root.join("srv/disco");
    fs::create_dir_all(server.join("parameters/n/modules")).unwrap();
    fs::write(server.join("parameters/n/modules/app"), "").unwrap();
    let app = server.join("modules/app");
    fs::create_dir_all(app.join("files/etc")).unwrap();
    fs::create_dir_all(app.join("handlers")).unwrap();
    fs::write(app.join("files/etc/app.conf"), "x=1\n").unwrap();
    fs::write(
        app.join("handlers/10-mark"),
        "echo \"ran for $DISCO_CHANGED\" > /var/tmp/handler-ran\n",
    )
    .unwrap();
    let script = format!(
        "set -e\n\
         mount --bind {r} {r}\n\
         for m in proc sys dev; do mount --rbind /$m {r}/$m; done\n\
         mount -t tmpfs tmpfs {r}/run\n\
         exec chroot {r} disco --server /srv/disco --node n dance",
        r = root.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_remove("NOOP")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("info: handler app/handlers/10-mark: exit 0"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/app.conf")).unwrap(),
        "x=1\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("var/tmp/handler-ran")).unwrap(),
        "ran for /etc/app.conf\n"
    );
}
