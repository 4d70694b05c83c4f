//! Benchmark: disco at scale (issue 26). Prints one table:
//!
//! - the noop dance of 20, 400 and 2,000 modules, two shapes: all
//!   independent, and one long chain (each module `after` the one
//!   before, so the deep requires closures are squashed). Each module is
//!   the `benches/dance.rs` kind: 3 static files, 2 templates reading two
//!   parameters, 1 script (writing a state file of its own, so the
//!   independent modules do not conflict). Wall time, per-module cost,
//!   its ratio to the 20-module per-module cost of the same shape (target
//!   ≤ 1.2; the 20-module row is run again just before each larger one,
//!   as the load of a shared machine moves), peak RSS, and the per-module cost broken down from the
//!   dance's own report: the `sandbox` step (its directories, a squash
//!   to make, fork, mounts, teardown), `files`, `templates`, `scripts`,
//!   `diff` (mean per module, as run: with `jobs` > 1 they overlap), and
//!   what is outside the modules (`fetch` + `plan` + disco's start and
//!   cleanup, per module);
//! - the first apply (live) of one module copying 5,000 small files,
//!   against `cp -a` of the same files in the same run (target ≤ 3×);
//! - `disco param get` with 2,000 keys, from the command line and from a
//!   script inside a dance (the sandbox's `disco`; target < 5 ms).
//!
//! `DISCO_SCALE_MAX` (default 2000) drops the sizes above it (e.g. 400
//! for a quick run); `DISCO_SCALE_SHAPE` (`independent` or `chain`)
//! keeps the rows of that shape only; `DISCO_BENCH_RUNS` sets the runs per measurement
//! (default: 3 at 20 modules, 1 above; the median is shown).
//!
//! Run as root: `cargo bench --bench scale`.

#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use workload::{measure, median, write};

/// Module sizes of the noop rows.
const SIZES: [usize; 3] = [20, 400, 2000];
/// Files of the first-apply row.
const MANY: usize = 5000;
/// Keys of the `param get` rows.
const KEYS: usize = 2000;
/// `disco param get` calls the script in the dance times.
const CALLS: usize = 100;

/// A server whose node `bench` has one module `many` with [`MANY`] small
/// files under `/srv/many`.
fn many(server: &Path) {
    write(&server.join("parameters/bench/modules/many"), "", 0o644);
    for i in 0..MANY {
        write(
            &server.join(format!(
                "modules/many/files/srv/many/d{:02}/f{i:04}",
                i / 100
            )),
            &format!("file {i} ......................................................\n"),
            0o644,
        );
    }
}

/// A server whose node `bench` has [`KEYS`] parameters and one module
/// `probe` whose script calls `disco param get` [`CALLS`] times and prints
/// `probe START END` (bash's `$EPOCHREALTIME`).
fn probe(server: &Path) {
    for k in 0..KEYS {
        write(
            &server.join(format!(
                "parameters/bench/parameters/k{:02}/k{k:04}",
                k / 100
            )),
            &format!("value {k}\n"),
            0o644,
        );
    }
    write(&server.join("parameters/bench/modules/probe"), "", 0o644);
    write(
        &server.join("modules/probe/scripts/10-probe"),
        &format!("#!/bin/bash\ns=$EPOCHREALTIME\nfor ((i = 0; i < {CALLS}; i++)); do disco param get k12/k1234 >/dev/null; done\necho \"probe $s $EPOCHREALTIME\"\n"),
        0o755,
    );
}

struct Bench {
    disco: PathBuf,
    dir: PathBuf,
    root: PathBuf,
    config: PathBuf,
}

impl Bench {
    /// `disco dance` of `server` onto `root` with state dir `state`.
    fn dance(&self, server: &Path, root: &Path, state: &Path, noop: bool) -> Command {
        let mut c = Command::new(&self.disco);
        c.env("NOOP", if noop { "true" } else { "false" })
            .arg("--config")
            .arg(&self.config)
            .arg("--server")
            .arg(server)
            .args(["--node", "bench", "--root"])
            .arg(root)
            .arg("--state-dir")
            .arg(state)
            .arg("dance");
        c
    }

    /// The noop row of `n` modules (`chain` or independent), after one
    /// dance that fetches the tree; prints it and returns the per-module
    /// cost in seconds.
    fn noop_row(&self, n: usize, chain: bool, base: Option<f64>) -> f64 {
        let shape = if chain { "chain" } else { "independent" };
        let server = self.dir.join(format!("{shape}-{n}"));
        workload::workload_shaped(&server, "bench", n, workload::Style::Echo, chain);
        let state = self.dir.join(format!("state-{shape}-{n}"));
        let warm = self
            .dance(&server, &self.root, &state, true)
            .output()
            .unwrap();
        assert!(
            warm.status.success(),
            "{}",
            String::from_utf8_lossy(&warm.stderr)
        );
        let runs = workload::runs(if n <= 20 { 3 } else { 1 });
        let m = measure(runs, || self.dance(&server, &self.root, &state, true));
        let wall = median(&m.wall);
        let per = wall / n as f64;
        let ratio = base.map_or(1.0, |b| per / b);
        println!(
            "noop, {n:>4} modules, {shape:<11} {:>8.2}s {:>8.1}ms {:>6.2}x {:>7.1}MB  {}",
            wall,
            per * 1e3,
            ratio,
            m.rss_kib as f64 / 1024.0,
            breakdown(&state, *m.wall.last().expect("a run"))
        );
        let _ = fs::remove_dir_all(&state);
        let _ = fs::remove_dir_all(&server);
        per
    }
}

/// The per-module cost of the last dance in `state` (`wall` its wall
/// time), from its report: the mean of each kind of module step, and
/// what is outside the modules (fetch, plan, disco's start and cleanup).
fn breakdown(state: &Path, wall: f64) -> String {
    let text = fs::read(state.join("reports/last.json")).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let modules = report["modules"].as_array().unwrap();
    let n = modules.len().max(1) as f64;
    let kinds = ["sandbox", "files", "templates", "scripts", "diff"];
    let mut sums = [0.0f64; 5];
    for m in modules {
        for s in m["steps"].as_array().unwrap() {
            let name = s["name"].as_str().unwrap();
            let kind = name.split('/').next().unwrap();
            if let Some(k) = kinds.iter().position(|k| *k == kind) {
                sums[k] += s["figures"]["time_real"].as_f64().unwrap();
            }
        }
    }
    let stages: f64 = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["figures"]["time_real"].as_f64().unwrap())
        .sum();
    let outside = wall - report["duration"].as_f64().unwrap() + stages;
    let mut parts: Vec<String> = kinds
        .iter()
        .zip(sums)
        .map(|(k, s)| format!("{k} {:.1}", s / n * 1e3))
        .collect();
    parts.push(format!("outside {:.1}", outside / n * 1e3));
    parts.join(" · ")
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the scale benchmark needs root"
    );
    let max: usize = std::env::var("DISCO_SCALE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let disco = PathBuf::from(env!("CARGO_BIN_EXE_disco"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let root = dir.join("root");
    workload::fixture_root(&root, &disco);
    let config = dir.join("disco.toml");
    fs::write(&config, "").unwrap();
    let b = Bench {
        disco,
        dir,
        root,
        config,
    };

    println!(
        "{:<38} {:>9} {:>10} {:>7} {:>9}  per-module breakdown, ms (report steps, mean)",
        "benchmark", "wall", "per module", "ratio", "peak RSS"
    );
    let shape = std::env::var("DISCO_SCALE_SHAPE").unwrap_or_default();
    for chain in [false, true] {
        let name = if chain { "chain" } else { "independent" };
        if !shape.is_empty() && shape != name {
            continue;
        }
        for n in SIZES.into_iter().filter(|&n| n <= max) {
            // The 20-module cost measured again just before: the load of
            // a shared machine moves between rows.
            let base = (n > SIZES[0]).then(|| b.noop_row(SIZES[0], chain, None));
            b.noop_row(n, chain, base);
        }
    }
    first_apply(&b);
    param_get(&b);
}

/// The first apply of [`many`] (a fresh root each run) against `cp -a` of
/// the same files, in the same run.
fn first_apply(b: &Bench) {
    let server = b.dir.join("many");
    many(&server);
    let state = b.dir.join("state-many");
    let fresh = |name: &str| {
        let r = b.dir.join(name);
        workload::copy_tree(&b.root, &r);
        r
    };
    let (mut disco, mut cp) = (Vec::new(), Vec::new());
    for _ in 0..workload::runs(3) {
        let r = fresh("root-many");
        let t = Instant::now();
        let out = b.dance(&server, &r, &state, false).output().unwrap();
        disco.push(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = fresh("root-cp");
        fs::create_dir_all(r.join("srv")).unwrap();
        let t = Instant::now();
        assert!(Command::new("cp")
            .arg("-a")
            .arg(server.join("modules/many/files/srv/many"))
            .arg(r.join("srv"))
            .status()
            .unwrap()
            .success());
        cp.push(t.elapsed().as_secs_f64());
    }
    let (d, c) = (median(&disco), median(&cp));
    println!(
        "first apply, {MANY} files (live dance) {:>8.3}s   cp -a {:.3}s   ratio {:.2}x (target <= 3)",
        d,
        c,
        d / c
    );
}

/// `disco param get` with [`KEYS`] keys: from the command line (median),
/// and from a script in a dance (the mean of [`CALLS`] calls).
fn param_get(b: &Bench) {
    let server = b.dir.join("probe");
    probe(&server);
    let state = b.dir.join("state-probe");
    let out = b.dance(&server, &b.root, &state, true).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let inside = text
        .lines()
        .find_map(|l| {
            let l = l.split_once("probe ")?.1;
            let (s, e) = l.trim().split_once(' ')?;
            Some((e.parse::<f64>().ok()? - s.parse::<f64>().ok()?) / CALLS as f64)
        })
        .expect("the probe's line");
    let m = measure(workload::runs(21), || {
        let mut c = Command::new(&b.disco);
        c.arg("--config")
            .arg(&b.config)
            .arg("--server")
            .arg(&server)
            .arg("--state-dir")
            .arg(&state)
            .args(["--node", "bench", "param", "get", "k12/k1234"]);
        c
    });
    println!(
        "param get, {KEYS} keys, command line   {:>7.2}ms   in a dance's script {:.2}ms (target < 5 ms)",
        median(&m.wall) * 1e3,
        inside * 1e3
    );
}
