//! Benchmark: what reading one parameter costs with 2,000 keys (20
//! modules defaulting 90 keys each, a group and the node 100 each).
//! Outside a dance: `disco param get KEY` from the command line, for a
//! key at each precedence level, and `disco param dump` (the whole tree)
//! beside it. Inside a dance: the sandbox's shim
//! ([`disco::sandbox::PARAM_SHIM`], `/bin/sh` + `cat`), and the render
//! driver's builtin answers ([`disco::exec::RENDER_DRIVER`]) as a template
//! calls them, `$(disco param get KEY)` and `$(hostname -s)`, against
//! `$(/bin/hostname -s)`. Prints ms per call (median of
//! `DISCO_BENCH_RUNS` runs, default 31; the in-shell rows are the
//! average of 200 calls in one bash).
//!
//! Run with `cargo bench --bench param`.

#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::path::Path;
use std::process::Command;

use workload::{measure, median, runs, write};

const MODULES: usize = 20;
const PER_MODULE: usize = 90;
const PER_LAYER: usize = 100;
/// Calls per bash for the in-shell rows.
const CALLS: usize = 200;

fn generate(server: &Path) {
    let node = server.join("parameters/bench");
    write(&node.join("groups/web"), "", 0o644);
    for i in 0..MODULES {
        let m = format!("m{i:02}");
        write(&node.join(format!("modules/{m}")), "", 0o644);
        let dir = server.join("modules").join(&m);
        write(&dir.join("requires"), "", 0o644);
        for k in 0..PER_MODULE {
            write(
                &dir.join(format!("parameters/{m}/k{k:03}")),
                &format!("{m} {k}\n"),
                0o644,
            );
        }
    }
    for k in 0..PER_LAYER {
        write(
            &server.join(format!("parameters/web/parameters/web/k{k:03}")),
            &format!("group {k}\n"),
            0o644,
        );
        write(
            &node.join(format!("parameters/node/k{k:03}")),
            &format!("node {k}\n"),
            0o644,
        );
    }
    // One key at every level: the node's value wins.
    write(&server.join("modules/m00/parameters/port"), "80\n", 0o644);
    write(
        &server.join("parameters/web/parameters/port"),
        "8080\n",
        0o644,
    );
    write(&node.join("parameters/port"), "8443\n", 0o644);
}

/// ms per call of `script` run by bash, `CALLS` calls in one bash, less
/// the same loop doing nothing.
fn in_shell(setup: &str, call: &str, env: &[(&str, &Path)]) -> f64 {
    let time = |body: &str| {
        let script = format!("{setup}\nfor ((i = 0; i < {CALLS}; i++)); do {body}; done\n");
        median(
            &measure(runs(31).min(9), || {
                let mut c2 = Command::new("bash");
                c2.args(["-c", &script]);
                for (k, v) in env {
                    c2.env(k, v);
                }
                c2
            })
            .wall,
        )
    };
    let base = time(":");
    (time(call) - base) * 1e3 / CALLS as f64
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    generate(&server);
    let config = dir.path().join("disco.toml");
    fs::write(&config, "").unwrap();
    let state = dir.path().join("state");
    let disco = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_disco"));
        c.arg("--config")
            .arg(&config)
            .arg("--server")
            .arg(&server)
            .arg("--state-dir")
            .arg(&state)
            .args(["--node", "bench"])
            .args(args);
        c
    };
    let out = disco(&["plan"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = disco(&["param", "dump"]).output().unwrap();
    let keys = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .filter(|l| !l.ends_with("= {}"))
        .count();

    println!(
        "{:<52} {:>9} {:>9}",
        format!("benchmark ({keys} keys)"),
        "median",
        "max"
    );
    let row = |name: &str, wall: &[f64]| {
        let max = wall.iter().cloned().fold(0.0, f64::max);
        println!(
            "{name:<52} {:>7.2}ms {:>7.2}ms",
            median(wall) * 1e3,
            max * 1e3
        );
    };
    let n = runs(31);
    for (what, key) in [
        ("module default", "m07/k042"),
        ("group", "web/k042"),
        ("node (over group and module)", "port"),
        ("directory (error)", "m07"),
        ("missing (error)", "m07/nope"),
    ] {
        let m = measure(n, || {
            let mut c = disco(&["param", "get", key]);
            if what.ends_with("(error)") {
                // measure() wants success: through `sh -c '…; true'`,
                // which adds one sh (about /bin/true's row) to these two.
                c = Command::new("sh");
                c.arg("-c").arg(format!(
                    "{} --config {} --server {} --state-dir {} --node bench param get {key}; true",
                    env!("CARGO_BIN_EXE_disco"),
                    config.display(),
                    server.display(),
                    state.display()
                ));
            }
            c
        });
        row(&format!("disco param get, {what}"), &m.wall);
    }
    let m = measure(n, || disco(&["param", "dump"]));
    row("disco param dump (the whole tree)", &m.wall);
    let m = measure(n, || Command::new("true"));
    row("baseline: /bin/true", &m.wall);

    // Inside a dance: the merged tree as the sandbox sees it.
    let params = dir.path().join("params");
    let cp = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p {p} && for d in {s}/modules/*/parameters {s}/parameters/web/parameters {s}/parameters/bench/parameters; do cp -a $d/. {p}/; done",
            p = params.display(),
            s = server.display()
        ))
        .status()
        .unwrap();
    assert!(cp.success());
    let shim = dir.path().join("disco");
    write(&shim, disco::sandbox::PARAM_SHIM, 0o755);
    let env = [("DISCO_PARAMS", params.as_path())];
    let driver_fn = disco::exec::RENDER_DRIVER
        .split_once("\n__disco_i=0")
        .unwrap()
        .0
        .split_once('\n')
        .unwrap()
        .1;
    println!(
        "{:<52} {:>9}",
        format!("inside a dance, per call ({CALLS} in one bash)"),
        "mean"
    );
    let per = |name: &str, ms: f64| println!("{name:<52} {ms:>7.2}ms");
    per(
        "shim: disco param get m07/k042 (sh + cat)",
        in_shell(
            "",
            &format!("{} param get m07/k042 >/dev/null", shim.display()),
            &env,
        ),
    );
    per(
        "shim in $(…): x=$(disco param get m07/k042)",
        in_shell(
            "",
            &format!("x=$({} param get m07/k042)", shim.display()),
            &env,
        ),
    );
    per(
        "driver function: x=$(disco param get m07/k042)",
        in_shell(driver_fn, "x=$(disco param get m07/k042)", &env),
    );
    per(
        "driver function, no $(…): disco param get >/dev/null",
        in_shell(driver_fn, "disco param get m07/k042 >/dev/null", &env),
    );
    per(
        "x=$(/bin/hostname -s)",
        in_shell("", "x=$(/bin/hostname -s)", &env),
    );
    per(
        "driver function: x=$(hostname -s)",
        in_shell(driver_fn, "x=$(hostname -s)", &env),
    );
}
