//! Benchmark: planning a generated 2,000-module tree, in-process and through
//! the real `disco plan` (fetch + plan). Prints a table; the target is
//! "well under a second" for the whole command.
//!
//! Run with `cargo bench --bench plan`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use disco::names::Name;
use disco::plan::plan;
use disco::tree::ServerTree;

const MODULES: usize = 2000;
const RUNS: usize = 10;

/// A tree where module i requires up to three earlier modules (`after`)
/// and every tenth module pulls in a later one (`before`); the node lists
/// every other module.
fn generate(root: &Path) {
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let node = root.join("parameters/bench/modules");
    fs::create_dir_all(&node).unwrap();
    for i in 0..MODULES {
        let dir = root.join(format!("modules/m{i:04}"));
        fs::create_dir_all(dir.join("parameters")).unwrap();
        fs::write(dir.join("parameters/key"), format!("{i}\n")).unwrap();
        let mut req = String::from("# generated\n");
        if i > 0 {
            for _ in 0..3 {
                req.push_str(&format!("after m{:04}\n", rand(i)));
            }
        }
        if i % 10 == 0 && i + 1 < MODULES {
            req.push_str(&format!("before m{:04}\n", i + 1 + rand(MODULES - i - 1)));
        }
        fs::write(dir.join("requires"), req).unwrap();
        if i % 2 == 0 {
            fs::write(node.join(format!("m{i:04}")), "").unwrap();
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    generate(&server);
    let node = Name::parse("bench", "bench").unwrap();

    let mut in_process = Vec::new();
    let mut planned = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let tree = ServerTree::open(&server).unwrap();
        let spec = tree.node(&node).unwrap();
        planned = plan(&tree, &spec).unwrap().order.len();
        in_process.push(t.elapsed());
    }

    let config = dir.path().join("disco.toml");
    fs::write(&config, "").unwrap();
    let mut command = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_disco"))
            .arg("--config")
            .arg(&config)
            .arg("--server")
            .arg(&server)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--node", "bench", "plan"])
            .output()
            .unwrap();
        command.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Baseline: what this machine's filesystem costs for the same amount of
    // copying: `cp -a` of the planned modules into a fresh dir, then `rm -rf`.
    let mut baseline = Vec::new();
    for _ in 0..RUNS {
        let dst = dir.path().join("cp-baseline");
        let t = Instant::now();
        let mut cp = Command::new("cp");
        cp.arg("-a").arg("--target-directory").arg(&dst);
        fs::create_dir(&dst).unwrap();
        for i in (0..MODULES).step_by(2) {
            cp.arg(server.join(format!("modules/m{i:04}")));
        }
        assert!(cp.status().unwrap().success());
        fs::remove_dir_all(&dst).unwrap();
        baseline.push(t.elapsed());
    }

    println!(
        "{:<44} {:>10} {:>10}",
        "benchmark (2,000 modules)", "median", "max"
    );
    let row = |name: &str, v: Vec<Duration>| {
        let max = *v.iter().max().unwrap();
        println!(
            "{name:<44} {:>8.1}ms {:>8.1}ms",
            median(v).as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    };
    row(&format!("plan, in-process ({planned} planned)"), in_process);
    row("disco plan (fetch into cache + plan)", command);
    row("baseline: cp -a of those modules + rm -rf", baseline);
}
