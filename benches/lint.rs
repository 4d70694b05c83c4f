//! Benchmark: `disco lint` of a generated 200-module, 500-node tree, the
//! size a git pre-receive hook must check in well under a second. Each
//! module has two templates, two scripts (every fourth a handler too),
//! parameters, an attributes line and a README.md; `requires` chains ten
//! modules long; nodes take two of 20 groups and one module of their own.
//! Prints median and max wall time and peak RSS (`wait4`, disco and the
//! bash it reaped) over `DISCO_BENCH_RUNS` runs (default 9), beside what
//! `bash -n` once per file costs for the same files.
//!
//! Run with `cargo bench --bench lint`.

#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use workload::{measure, median, runs, write, Measure};

const MODULES: usize = 200;
const NODES: usize = 500;
const GROUPS: usize = 20;

/// Writes the tree; returns the files `bash -n` must accept.
fn generate(server: &Path) -> Vec<PathBuf> {
    let mut checked = Vec::new();
    for i in 0..MODULES {
        let m = format!("m{i:03}");
        let dir = server.join("modules").join(&m);
        let requires = if i % 10 != 0 {
            format!("# chain\nafter m{:03}\n", i - 1)
        } else {
            String::new()
        };
        write(&dir.join("requires"), &requires, 0o644);
        write(
            &dir.join(format!("parameters/{m}/port")),
            &format!("{}\n", 8000 + i),
            0o644,
        );
        write(
            &dir.join(format!("parameters/{m}/users/alice")),
            "1000\n",
            0o644,
        );
        write(&dir.join("README.md"), &format!("# {m}\n"), 0o644);
        write(
            &dir.join("attributes"),
            &format!("/etc/{m}/a.conf 0640 root:root\n"),
            0o644,
        );
        if i % 5 == 0 {
            write(&dir.join("timeout"), "60\n", 0o644);
        }
        write(
            &dir.join(format!("files/etc/{m}/static")),
            "static\n",
            0o644,
        );
        for t in ["a", "b"] {
            let p = dir.join(format!("templates/etc/{m}/{t}.conf"));
            write(
                &p,
                &format!(
                    "# {m} {t}\nport=$(disco param get {m}/port)\nif [ \"$port\" -gt 0 ]; then\n  echo \"listen $port\"\nfi\nfor u in alice; do\n  echo \"user $u\"\ndone\ncat <<EOF\n# end of {t}\nEOF\n"
                ),
                0o644,
            );
            checked.push(p);
        }
        for (s, body) in [
            ("10-setup", "mkdir -p /var/lib/bench\ncase \"$NOOP\" in\n  true) echo noop ;;\n  *) : ;;\nesac\n"),
            ("20-check", "test -d /var/lib/bench || { echo missing >&2; exit 1; }\n"),
        ] {
            let p = dir.join("scripts").join(s);
            write(&p, body, 0o755);
            checked.push(p);
        }
        if i % 4 == 0 {
            let p = dir.join("handlers/10-reload");
            write(&p, &format!("systemctl reload {m} || true\n"), 0o755);
            checked.push(p);
        }
    }
    for g in 0..GROUPS {
        let dir = server.join("parameters").join(format!("g{g:02}"));
        // The top of a chain: the group pulls in its ten modules.
        write(&dir.join(format!("modules/m{:03}", g * 10 + 9)), "", 0o644);
        write(&dir.join("parameters/group"), &format!("g{g:02}\n"), 0o644);
    }
    for n in 0..NODES {
        let dir = server.join("parameters").join(format!("n{n:03}"));
        write(&dir.join(format!("groups/g{:02}", n % GROUPS)), "", 0o644);
        write(
            &dir.join(format!("groups/g{:02}", (n * 7 + 3) % GROUPS)),
            "",
            0o644,
        );
        write(
            &dir.join(format!("modules/m{:03}", (n * 13) % MODULES)),
            "",
            0o644,
        );
        write(
            &dir.join("parameters/hostname"),
            &format!("n{n:03}\n"),
            0o644,
        );
    }
    checked
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    let checked = generate(&server);
    let config = dir.path().join("disco.toml");
    fs::write(&config, "").unwrap();

    let lint = measure(runs(9), || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_disco"));
        c.arg("--config")
            .arg(&config)
            .arg("lint")
            .arg("--server")
            .arg(&server);
        c
    });
    // What the same check costs with a bash per file, one after another.
    let list = dir.path().join("files");
    let names: Vec<String> = checked.iter().map(|p| p.display().to_string()).collect();
    fs::write(&list, names.join("\n")).unwrap();
    let per_file = measure(runs(9), || {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg("while IFS= read -r f; do bash -n \"$f\" || exit 1; done < \"$1\"")
            .arg("bench")
            .arg(&list);
        c
    });

    println!(
        "{:<58} {:>9} {:>9} {:>10}",
        format!(
            "lint: {MODULES} modules, {NODES} nodes, {} files for bash -n",
            checked.len()
        ),
        "median",
        "max",
        "peak RSS"
    );
    let row = |name: &str, m: Measure| {
        let max = m.wall.iter().cloned().fold(0.0, f64::max);
        println!(
            "{name:<58} {:>7.0}ms {:>7.0}ms {:>6.1} MiB",
            median(&m.wall) * 1e3,
            max * 1e3,
            m.rss_kib as f64 / 1024.0
        );
    };
    row("disco lint --server DIR", lint);
    row("baseline: bash -n once per file, in turn", per_file);
}
