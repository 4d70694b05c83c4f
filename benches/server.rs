//! Benchmark: how many nodes one server holds. A private sshd on
//! 127.0.0.1 serves the 20-module workload; bursts of N nodes (each its own
//! state dir, cache already current) fetch at the same instant with
//! `disco plan`, as a fleet whose timers fire together would. Prints, for
//! sshd's default `MaxStartups 10:30:100` and for a raised one, the wall
//! time of each burst, the fetches per second it sustained and how many
//! connections sshd refused. docs/fleet.md sizes a server from it.
//!
//! Run as root: `cargo bench --bench server` (needs openssh-server).

#[path = "../tests/common/sshd.rs"]
mod sshd;
#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn fetch(disco: &Path, config: &Path, state: &Path, uri: &str) -> Command {
    let mut c = Command::new(disco);
    c.env_remove("NOOP")
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["--server", uri, "--node", "bench", "plan"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the server benchmark needs root (it runs its own sshd)"
    );
    let disco = PathBuf::from(env!("CARGO_BIN_EXE_disco"));
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = d.join("server");
    workload::workload(&server, "bench", 20, false);
    let key = d.join("key");
    let public = sshd::keygen(&key);
    let runs = workload::runs(3);
    let bursts = [1usize, 5, 10, 20, 40];
    let clients = *bursts.iter().max().unwrap();

    println!(
        "{:<34} {:>6} {:>10} {:>10} {:>9}",
        "no-change fetch bursts", "nodes", "wall", "fetches/s", "refused"
    );
    for (name, setting) in [
        (
            "sshd default MaxStartups 10:30:100",
            "MaxStartups 10:30:100\n",
        ),
        ("MaxStartups 200:30:400", "MaxStartups 200:30:400\n"),
    ] {
        let s = sshd::Sshd::start_with(
            &d.join(format!("sshd-{}", setting.len())),
            &[sshd::forced(&public, &server, None)],
            setting,
        );
        let config = d.join("disco.toml");
        fs::write(&config, s.client_config(&key)).unwrap();
        let uri = s.uri(server.to_str().unwrap());
        let states: Vec<PathBuf> = (0..clients).map(|i| d.join(format!("state{i}"))).collect();
        for st in &states {
            // Each node's cache is current: what follows are no-change fetches.
            let _ = fs::remove_dir_all(st);
            let ok = fetch(&disco, &config, st, &uri).status().unwrap();
            assert!(ok.success(), "first fetch failed");
        }
        for &n in &bursts {
            let mut walls = Vec::new();
            let mut refused = 0;
            for _ in 0..runs {
                let started = Instant::now();
                let children: Vec<_> = states[..n]
                    .iter()
                    .map(|st| fetch(&disco, &config, st, &uri).spawn().unwrap())
                    .collect();
                for mut c in children {
                    if !c.wait().unwrap().success() {
                        refused += 1;
                    }
                }
                walls.push(started.elapsed().as_secs_f64());
            }
            let wall = workload::median(&walls);
            println!(
                "{name:<34} {n:>6} {:>8.0}ms {:>10.1} {:>5}/{:<3}",
                wall * 1e3,
                n as f64 / wall,
                refused,
                n * runs
            );
        }
    }
}
