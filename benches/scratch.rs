//! Benchmark: a noop dance whose module writes 300 MB, with the state dir
//! inside the root (as on a node: the layers go to the scratch
//! filesystem). Prints the wall time and the rise of the machine's
//! `Shmem` (tmpfs pages) sampled every 20 ms: the scratch is on disk, so
//! it stays flat. Also what the image holds on disk (`du`) after each
//! run: its blocks go back when the run ends (`FITRIM`), so only its ext4
//! metadata stays.
//!
//! Run as root: `cargo bench --bench scratch`.

#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn shmem_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = d.join("server");
    workload::one_module_node(&server, "n", "big");
    fs::create_dir_all(server.join("modules/big/scripts")).unwrap();
    let script = server.join("modules/big/scripts/10-big");
    fs::write(
        &script,
        "mkdir -p /opt\nhead -c 300M /dev/zero > /opt/big\n",
    )
    .unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root = d.join("root");
    let st = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-fixture-root"))
        .arg(&root)
        .arg(env!("CARGO_BIN_EXE_disco"))
        .output()
        .unwrap();
    assert!(st.status.success(), "make-fixture-root");
    let state = root.join("var/lib/disco");
    fs::create_dir_all(&state).unwrap();
    println!(
        "noop dance writing 300 MB, state dir inside the root      wall    Shmem rise   image on disk after"
    );
    for round in 1..=3 {
        let base = shmem_kib();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_disco"))
            .env("NOOP", "1")
            .arg("--server")
            .arg(&server)
            .args(["--node", "n", "--root"])
            .arg(&root)
            .arg("--state-dir")
            .arg(&state)
            .args(["dance", "--quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut peak = base;
        while child.try_wait().unwrap().is_none() {
            peak = peak.max(shmem_kib());
            std::thread::sleep(Duration::from_millis(20));
        }
        let wall = started.elapsed().as_secs_f64();
        let what = if round == 1 {
            "first (makes the image)"
        } else {
            "again"
        };
        let du = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(state.join("scratch.img"))
                .map(|m| m.blocks() * 512)
                .unwrap_or(0)
        };
        println!(
            "{what:<56} {wall:>6.2} s  {:>7.1} MiB  {:>9.1} MiB",
            (peak - base) as f64 / 1024.0,
            du as f64 / (1 << 20) as f64
        );
    }
}
