//! Benchmark: what encrypted secrets cost a node. A node with 100 secrets
//! (each encrypted to its key and an admin's): opening them in-process
//! (`secrets::open_params`: the key read once, 100 age decryptions), and
//! the real `disco param dump` with and without `--show-secrets` (fetch
//! from a local tree, merge, and — with the flag — decrypt). Prints a
//! table; the target is under 20 ms for the 100 decryptions.
//!
//! Run with `cargo bench --bench secrets`.

#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use disco::names::Name;
use disco::params::ParamTree;
use disco::secrets::{self, Recipient};

const SECRETS: usize = 100;

fn keygen(path: &Path) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    fs::read_to_string(path.with_extension("pub")).unwrap()
}

fn main() {
    let runs = workload::runs(21);
    let dir = tempfile::tempdir().unwrap();
    let node_key = dir.path().join("node");
    let node_pub = keygen(&node_key);
    let admin_pub = keygen(&dir.path().join("admin"));
    let to = [
        Recipient::parse(&node_pub, "bench", "node.pub").unwrap(),
        Recipient::parse(&admin_pub, "admin", "admins").unwrap(),
    ];
    let server = dir.path().join("server");
    let layer = server.join("parameters/bench");
    fs::create_dir_all(layer.join("modules")).unwrap();
    fs::create_dir_all(server.join("modules")).unwrap();
    let secrets_dir = layer.join("parameters/secrets");
    fs::create_dir_all(&secrets_dir).unwrap();
    fs::write(layer.join("node.pub"), &node_pub).unwrap();
    for i in 0..SECRETS {
        let value = format!("password-{i:03}-{}\n", "x".repeat(24));
        fs::write(
            secrets_dir.join(format!("s{i:03}")),
            secrets::encrypt(&to, value.as_bytes()).unwrap(),
        )
        .unwrap();
    }

    // In-process: load the layer, then open its 100 secrets.
    let node = Name::parse("bench", "node").unwrap();
    let mut load = Vec::new();
    let mut open = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut p = ParamTree::load(&layer.join("parameters"), "bench").unwrap();
        load.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let n = secrets::open_params(&mut p, &node, &node_key, &|k| k.to_string()).unwrap();
        open.push(t.elapsed().as_secs_f64());
        assert_eq!(n, SECRETS);
    }

    // The real binary: param dump masked (no decryption) and shown.
    let config = dir.path().join("disco.toml");
    fs::write(
        &config,
        format!("ssh_identity = \"{}\"\n", node_key.display()),
    )
    .unwrap();
    let state = dir.path().join("state");
    let disco = |show: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_disco"));
        c.arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .arg("--server")
            .arg(&server)
            .args(["--node", "bench", "param", "dump"]);
        if show {
            c.arg("--show-secrets");
        }
        c
    };
    let st = Command::new(env!("CARGO_BIN_EXE_disco"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .arg("--server")
        .arg(&server)
        .args(["--node", "bench", "plan"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let masked = workload::measure(runs, || disco(false));
    let shown = workload::measure(runs, || disco(true));

    let ms = |v: &[f64]| workload::median(v) * 1000.0;
    println!("secrets: {SECRETS} age-encrypted secrets, each to 2 ssh-ed25519 keys; median of {runs} runs");
    println!("| what | median | per secret |");
    println!("|---|---|---|");
    println!(
        "| load the 100 files (ParamTree::load) | {:.2} ms | {:.1} µs |",
        ms(&load),
        ms(&load) * 1000.0 / SECRETS as f64
    );
    println!(
        "| open them with the node's key (open_params) | {:.2} ms | {:.1} µs |",
        ms(&open),
        ms(&open) * 1000.0 / SECRETS as f64
    );
    println!(
        "| `disco param dump` (masked, nothing decrypted) | {:.1} ms | |",
        ms(&masked.wall)
    );
    println!(
        "| `disco param dump --show-secrets` (decrypts all) | {:.1} ms | |",
        ms(&shown.wall)
    );
    println!("target: opening {SECRETS} secrets under 20 ms");
}
