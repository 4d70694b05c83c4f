//! Benchmark: the noop dance on a fixture root, for the bundled example and
//! for a generated workload of 20 modules (3 static files of ~1 KiB, 2
//! templates reading two parameters, 1 script that appends a line to its
//! state file only when missing). Prints median wall time and peak RSS,
//! the sandbox setup + teardown cost per module (20 empty modules against
//! none), the cost of `noop_network = "host"` (pasta, once per dance),
//! and the raw floor: the same copies, renders and scripts done with
//! plain cp and bash, no sandbox.
//!
//! Run as root: `cargo bench --bench dance`.

#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::path::{Path, PathBuf};

use std::process::Command;
use workload::{measure, median, workload, Measure};

fn runs() -> usize {
    workload::runs(9)
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the dance benchmark needs root"
    );
    let disco = PathBuf::from(env!("CARGO_BIN_EXE_disco"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    workload::fixture_root(&root, &disco);
    let config = dir.path().join("disco.toml");
    fs::write(&config, "").unwrap();

    // noop_network = "host": the noop network routed outward by pasta.
    let config_host = dir.path().join("disco-host.toml");
    fs::write(&config_host, "noop_network = \"host\"\n").unwrap();
    let dance_with = |server: &Path, node: &str, config: &Path| {
        let (server, node, root, config, state, disco) = (
            server.to_path_buf(),
            node.to_string(),
            root.clone(),
            config.to_path_buf(),
            dir.path().join("state"),
            disco.clone(),
        );
        move || {
            let mut c = Command::new(&disco);
            c.env("NOOP", "true")
                .arg("--config")
                .arg(&config)
                .arg("--server")
                .arg(&server)
                .args(["--node", &node, "--root"])
                .arg(&root)
                .arg("--state-dir")
                .arg(&state)
                .arg("dance");
            c
        }
    };
    let dance = |server: &Path, node: &str| dance_with(server, node, &config);

    let work = dir.path().join("work");
    workload(&work, "bench", 20, false);
    let empty20 = dir.path().join("empty20");
    workload(&empty20, "bench", 20, true);
    let empty0 = dir.path().join("empty0");
    workload(&empty0, "bench", 0, true);

    let example = measure(runs(), dance(&repo.join("server-layout"), "example-node"));
    let w20 = measure(runs(), dance(&work, "bench"));
    let e20 = measure(runs(), dance(&empty20, "bench"));
    let e0 = measure(runs(), dance(&empty0, "bench"));
    let host = measure(runs(), dance_with(&empty20, "bench", &config_host));

    // The raw floor: the same work with cp and bash into a scratch copy of /etc.
    let floor_script = dir.path().join("floor.sh");
    let mut s = String::from("set -e\nout=$1\nrm -rf \"$out\"; mkdir -p \"$out\"\n");
    for i in 0..20 {
        let m = format!("m{i:02}");
        let md = work.join("modules").join(&m);
        s.push_str(&format!("mkdir -p \"$out/etc/bench/{m}\"\n"));
        for f in 1..=3 {
            s.push_str(&format!(
                "cp {}/files/etc/bench/{m}/f{f}.conf \"$out/etc/bench/{m}/\"\n",
                md.display()
            ));
        }
        for t in 1..=2 {
            s.push_str(&format!(
                "PATH=/bin:/usr/bin bash -c 'disco() {{ cat {}/parameters/$3; }}; export -f disco; bash {}/templates/etc/bench/{m}/t{t}.conf' > \"$out/etc/bench/{m}/t{t}.conf\"\n",
                md.display(),
                md.display()
            ));
        }
        s.push_str(&format!(
            "sed 's|/var/lib/bench|'\"$out\"'|g' {}/scripts/10-state | bash\n",
            md.display()
        ));
    }
    fs::write(&floor_script, s).unwrap();
    let floor_out = dir.path().join("floor-out");
    let floor = measure(runs(), || {
        let mut c = Command::new("bash");
        c.arg(&floor_script).arg(&floor_out);
        c
    });

    println!(
        "{:<58} {:>10} {:>10}",
        "noop dance on a fixture root", "median", "peak RSS"
    );
    let row = |name: &str, m: &Measure| {
        println!(
            "{name:<58} {:>8.1}ms {:>7.1}MB",
            median(&m.wall) * 1e3,
            m.rss_kib as f64 / 1024.0
        )
    };
    row("bundled example (2 modules)", &example);
    row("20 modules x (3 files, 2 templates, 1 script)", &w20);
    row("20 empty modules", &e20);
    row("0 modules (fetch, plan, report only)", &e0);
    row("20 empty modules, noop_network = \"host\" (pasta)", &host);
    row(
        "raw floor: same work with plain cp + bash, no sandbox",
        &floor,
    );
    println!(
        "{:<58} {:>8.2}ms",
        "sandbox setup + teardown per module ((20 empty - 0) / 20)",
        (median(&e20.wall) - median(&e0.wall)) / 20.0 * 1e3
    );
    println!(
        "{:<58} {:>8.2}ms",
        "noop_network = \"host\", once per dance (pasta, DNS relay)",
        (median(&host.wall) - median(&e20.wall)) * 1e3
    );

    // Scale: a live no-change dance of 20, 100 and 400 workload modules on
    // a converged root; the cost per module should not grow with their
    // number (independent modules: each on the root alone; a long chain
    // is `cargo bench --bench scale`'s).
    if std::env::var_os("DISCO_BENCH_SCALE").is_some_and(|v| v == "0") {
        return;
    }
    println!(
        "\n{:<58} {:>10} {:>10}",
        "live no-change dance, converged root", "median", "per module"
    );
    for n in [20, 100, 400] {
        let server = dir.path().join(format!("scale{n}"));
        workload(&server, "bench", n, false);
        let state = dir.path().join(format!("scale-state{n}"));
        let live = || {
            let mut c = Command::new(&disco);
            c.env_remove("NOOP")
                .arg("--config")
                .arg(&config)
                .arg("--server")
                .arg(&server)
                .args(["--node", "bench", "--root"])
                .arg(&root)
                .arg("--state-dir")
                .arg(&state)
                .args(["dance", "--quiet"]);
            c
        };
        let _ = fs::remove_dir_all(root.join("etc/bench"));
        let _ = fs::remove_dir_all(root.join("var/lib/bench"));
        let first = live().output().unwrap();
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let m = measure(runs(), live);
        println!(
            "{:<58} {:>8.0}ms {:>8.2}ms",
            format!("{n} modules x (3 files, 2 templates, 1 script)"),
            median(&m.wall) * 1e3,
            median(&m.wall) * 1e3 / n as f64
        );
    }
}
