//! Benchmark: the standard modules (`stdlib/`) on a real Debian 12 root
//! made by `debootstrap --variant=minbase` (cached under `target/`), as a
//! node uses them: groups, users with SSH keys, sysctl, cron, hosts, motd
//! and a service; `packages` installing `less` too when the Debian mirror
//! answers. Prints median wall and peak RSS of the first dance (a fresh
//! copy of the root each run), a no-change dance and a converged noop.
//!
//! Run as root: `cargo bench --bench stdlib` (needs debootstrap).

#[path = "../tests/common/debian.rs"]
mod debian;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "common/workload.rs"]
mod workload;

/// Wall time of a dance that must succeed (exit 0 or 2).
fn measure(c: &mut Command) -> f64 {
    let started = Instant::now();
    let out = c.output().unwrap();
    let wall = started.elapsed().as_secs_f64();
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wall
}

/// disco's own peak RSS in the last dance (KiB), from its report: the
/// figures of its in-process stages and diffs (apt-get and the scripts
/// are processes of their own, reported per step).
fn own_rss(disco: &Path, state: &Path) -> u64 {
    let out = Command::new(disco)
        .arg("--state-dir")
        .arg(state)
        .args(["report", "--json"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mem = |s: &serde_json::Value| s["figures"]["mem_max"].as_u64().unwrap_or(0);
    let stages = r["stages"].as_array().into_iter().flatten().map(mem);
    let diffs = r["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["steps"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == "diff")
        .map(mem);
    stages.chain(diffs).max().unwrap_or(0)
}

fn param(server: &Path, key: &str, value: &str) {
    workload::write(
        &server.join("parameters/n/parameters").join(key),
        value,
        0o644,
    );
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the stdlib benchmark needs root"
    );
    let disco = PathBuf::from(env!("CARGO_BIN_EXE_disco"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    fs::create_dir_all(d.join("template")).unwrap();
    let Some(template) = debian::root(&d.join("template")) else {
        return; // said why
    };
    // The server tree: the standard modules as its modules/.
    let server = d.join("server");
    fs::create_dir_all(server.join("parameters/n/modules")).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(repo.join("stdlib"))
        .arg(server.join("modules"))
        .status()
        .unwrap();
    assert!(st.success());
    let mut modules = vec![
        "groups", "users", "sysctl", "cron", "hosts", "motd", "services",
    ];
    let packages = debian::mirror_reachable();
    if packages {
        modules.push("packages");
        param(&server, "packages/install/less", "");
    } else {
        eprintln!("(deb.debian.org cannot be reached: packages is left out)");
    }
    for m in &modules {
        workload::write(&server.join("parameters/n/modules").join(m), "", 0o644);
    }
    param(&server, "groups/ops/gid", "2000\n");
    for u in ["alice", "bob", "carol"] {
        param(&server, &format!("users/{u}/shell"), "/bin/bash\n");
        param(&server, &format!("users/{u}/groups"), "ops\n");
        param(
            &server,
            &format!("users/{u}/authorized_keys"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl u\n",
        );
    }
    param(&server, "sysctl/vm.swappiness", "10\n");
    param(&server, "sysctl/net.ipv4.ip_forward", "1\n");
    param(&server, "cron/backup/schedule", "30 2 * * *\n");
    param(&server, "cron/backup/command", "/usr/local/bin/backup\n");
    param(&server, "hosts/entries/db", "10.0.0.5 db.example.org db\n");
    param(&server, "motd/text", "Authorized use only.\n");
    param(&server, "services/hello/enabled", "true\n");
    param(&server, "services/hello/running", "true\n");
    let config = d.join("disco.toml");
    fs::write(&config, "").unwrap();

    let dance = |root: &Path, noop: bool| {
        let mut c = Command::new(&disco);
        c.env_remove("NOOP")
            .arg("--config")
            .arg(&config)
            .arg("--server")
            .arg(&server)
            .args(["--node", "n", "--root"])
            .arg(root)
            .arg("--state-dir")
            .arg(root.join("var/lib/disco"))
            .args(["dance", "--quiet", "--detailed-exitcodes"]);
        if noop {
            c.env("NOOP", "true");
        }
        c
    };
    let fresh = |i: usize| -> PathBuf {
        let root = d.join(format!("root{i}"));
        let _ = fs::remove_dir_all(&root);
        let st = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success());
        fs::create_dir_all(root.join("var/lib/disco")).unwrap();
        workload::write(
            &root.join("etc/systemd/system/hello.service"),
            "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n",
            0o644,
        );
        root
    };

    let runs = workload::runs(5);
    let (mut first, mut same, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    let mut rss = 0;
    for i in 0..runs {
        let root = fresh(i % 2);
        first.push(measure(&mut dance(&root, false)));
        rss = rss.max(own_rss(&disco, &root.join("var/lib/disco")));
        same.push(measure(&mut dance(&root, false)));
        rss = rss.max(own_rss(&disco, &root.join("var/lib/disco")));
        noop.push(measure(&mut dance(&root, true)));
        rss = rss.max(own_rss(&disco, &root.join("var/lib/disco")));
        let _ = fs::remove_dir_all(&root);
    }
    println!(
        "{:<58} {:>10}",
        format!(
            "stdlib on a Debian 12 minbase root ({} modules{})",
            modules.len(),
            if packages { ", less installed" } else { "" }
        ),
        "median"
    );
    println!(
        "{:<58} {:>8.0}ms",
        "first dance (live)",
        workload::median(&first) * 1e3
    );
    println!(
        "{:<58} {:>8.0}ms",
        "no-change dance (live)",
        workload::median(&same) * 1e3
    );
    println!(
        "{:<58} {:>8.0}ms",
        "converged noop dance",
        workload::median(&noop) * 1e3
    );
    println!(
        "{:<58} {:>8.1}MB",
        "peak RSS of disco itself (any run; apt-get's is its own)",
        rss as f64 / 1024.0
    );
}
