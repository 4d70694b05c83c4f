//! Benchmark: the live dance and its merge. For the 20-module workload of
//! `benches/dance.rs`: first apply on a fresh fixture root and the
//! no-change re-apply. Then the merge alone (live dance minus the same
//! noop dance) for 10,000 small changed files and for one 1 GiB file, on
//! the rename path (same filesystem as the state dir) and the copy path (a
//! tmpfs mounted under ROOT), and for 10,000 files on a ROOT padded with
//! 50,000 unrelated files — merge cost follows the changes, not ROOT.
//!
//! Run as root: `cargo bench --bench merge`.

#[path = "common/workload.rs"]
mod workload;

use workload::write;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A one-module server whose script is `script`.
fn one_script(server: &Path, script: &str) {
    fs::create_dir_all(server.join("parameters/bench/modules")).unwrap();
    write(&server.join("parameters/bench/modules/m"), "", 0o644);
    write(&server.join("modules/m/scripts/10-x"), script, 0o755);
}

struct Bench {
    disco: PathBuf,
    template: PathBuf,
    dir: PathBuf,
    config: PathBuf,
}

impl Bench {
    fn fresh_root(&self, name: &str) -> PathBuf {
        let root = self.dir.join(name);
        workload::copy_tree(&self.template, &root);
        root
    }

    /// One dance; its wall time in seconds.
    fn dance(&self, server: &Path, root: &Path, noop: bool) -> f64 {
        self.dance_output(server, root, noop).0
    }

    /// One dance; its wall time and its stderr.
    fn dance_output(&self, server: &Path, root: &Path, noop: bool) -> (f64, String) {
        let t = Instant::now();
        let out = Command::new(&self.disco)
            .env("NOOP", if noop { "true" } else { "false" })
            .arg("--config")
            .arg(&self.config)
            .arg("--server")
            .arg(server)
            .args(["--node", "bench", "--root"])
            .arg(root)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("dance")
            .output()
            .unwrap();
        let wall = t.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        (wall, err)
    }
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the merge benchmark needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    let b = Bench {
        disco: PathBuf::from(env!("CARGO_BIN_EXE_disco")),
        template: dir.path().join("template"),
        dir: dir.path().to_path_buf(),
        config: dir.path().join("disco.toml"),
    };
    fs::write(&b.config, "").unwrap();
    let st = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-fixture-root"))
        .arg(&b.template)
        .arg(&b.disco)
        .status()
        .unwrap();
    assert!(st.success());

    println!("{:<62} {:>10}", "live dance / merge", "median");
    let row = |name: &str, secs: f64| println!("{name:<62} {:>8.1}ms", secs * 1e3);

    let work = dir.path().join("work");
    workload::workload(&work, "bench", 20, false);
    let mut first = Vec::new();
    let mut again = Vec::new();
    for _ in 0..5 {
        let root = b.fresh_root("w");
        first.push(b.dance(&work, &root, false));
        again.push(b.dance(&work, &root, false));
    }
    row(
        "20 modules: first apply on a fresh fixture root",
        workload::median(&first),
    );
    row("20 modules: no-change re-apply", workload::median(&again));

    // The merge alone, as the live dance reports it ("merged N change(s) … in X ms").
    let merge_cost = |name: &str, script: &str, pad: usize, mount_tmpfs: bool| {
        let server = dir.path().join(format!("srv-{name}"));
        one_script(&server, script);
        let mut costs = Vec::new();
        for _ in 0..3 {
            let root = b.fresh_root("m");
            for i in 0..pad {
                write(
                    &root.join(format!("pad/d{}/f{i}", i / 1000)),
                    "padding\n",
                    0o644,
                );
            }
            fs::create_dir_all(root.join("srv")).unwrap();
            if mount_tmpfs {
                nix::mount::mount(
                    Some("bench"),
                    &root.join("srv"),
                    Some("tmpfs"),
                    nix::mount::MsFlags::empty(),
                    Some("size=2g"),
                )
                .unwrap();
            }
            let (_, err) = b.dance_output(&server, &root, false);
            if mount_tmpfs {
                nix::mount::umount2(&root.join("srv"), nix::mount::MntFlags::MNT_DETACH).unwrap();
            }
            let ms: f64 = err
                .lines()
                .find_map(|l| {
                    l.strip_prefix("info: merged ")
                        .and_then(|r| r.rsplit(" in ").next())
                        .and_then(|r| r.strip_suffix(" ms"))
                })
                .and_then(|v| v.parse().ok())
                .expect("the live dance reports its merge time");
            costs.push(ms / 1e3);
        }
        workload::median(&costs)
    };
    let many = "mkdir -p /srv/many; cd /srv/many; for i in $(seq 10000); do echo $i > f$i; done\n";
    let big = "dd if=/dev/zero of=/srv/big bs=1M count=1024 status=none\n";
    row(
        "merge 10,000 small files, rename path",
        merge_cost("many", many, 0, false),
    );
    row(
        "merge 10,000 small files, rename path, ROOT + 50,000 files",
        merge_cost("many-pad", many, 50_000, false),
    );
    row(
        "merge 10,000 small files, copy path (tmpfs under ROOT)",
        merge_cost("many-tmpfs", many, 0, true),
    );
    row(
        "merge one 1 GiB file, rename path",
        merge_cost("big", big, 0, false),
    );
    row(
        "merge one 1 GiB file, copy path (tmpfs under ROOT)",
        merge_cost("big-tmpfs", big, 0, true),
    );
}
