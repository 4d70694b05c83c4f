//! Benchmark: one 2 GiB sparse file (three 1 MiB data regions) in a
//! module, through the local transport, the SSH transport (a private
//! sshd), a noop dance and a live dance. Prints wall time, peak RSS of
//! disco (`wait4`, its children included) and the real blocks of the
//! result: nothing is ever held whole in memory, and holes stay holes.
//!
//! Run as root: `cargo bench --bench bigfile` (needs openssh-server).

#[path = "../tests/common/sshd.rs"]
mod sshd;
#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const SIZE: u64 = 2 << 30;

/// Runs `cmd`, returning (seconds, peak RSS in MiB of it and its children).
#[allow(clippy::zombie_processes)] // reaped by wait4
fn measure(cmd: &mut Command) -> (f64, f64) {
    let started = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    (
        started.elapsed().as_secs_f64(),
        ru.ru_maxrss as f64 / 1024.0,
    )
}

fn blocks_mib(p: &Path) -> f64 {
    fs::metadata(p)
        .map(|m| m.blocks() as f64 * 512.0 / (1 << 20) as f64)
        .unwrap_or(-1.0)
}

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = d.join("server");
    workload::one_module_node(&server, "n", "m");
    let big = server.join("modules/m/files/srv/big");
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    let f = fs::File::create(&big).unwrap();
    f.set_len(SIZE).unwrap();
    let mib = vec![0x5au8; 1 << 20];
    for at in [0, SIZE / 2, SIZE - (1 << 20)] {
        f.write_all_at(&mib, at).unwrap();
    }
    let root = d.join("root");
    fs::create_dir_all(root.join("srv")).unwrap();
    let config = d.join("disco.toml");
    fs::write(&config, "max_file_size = 4294967296\n").unwrap();
    let disco = |state: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_disco"));
        c.env_remove("NOOP")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(state)
            .args(["--node", "n"]);
        c
    };
    println!(
        "2 GiB sparse file (3 MiB of data)                 wall      peak RSS   blocks of result"
    );
    let state = d.join("state-local");
    let (t, rss) = measure(disco(&state).arg("--server").arg(&server).arg("plan"));
    let cached = state.join("cache/modules/m/files/srv/big");
    println!(
        "fetch, local transport                       {t:>8.2} s  {rss:>8.1} MiB  {:>8.1} MiB",
        blocks_mib(&cached)
    );

    let key = d.join("key");
    let public = sshd::keygen(&key);
    let sshd = sshd::Sshd::start(
        &d.join("sshd"),
        &[sshd::forced(&public, &server, Some("n"))],
    );
    fs::write(
        &config,
        sshd.client_config(&key) + "max_file_size = 4294967296\nio_timeout = 600\n",
    )
    .unwrap();
    let state = d.join("state-ssh");
    let uri = sshd.uri(&server.display().to_string());
    let (t, rss) = measure(disco(&state).args(["--server", &uri, "plan"]));
    let cached = state.join("cache/modules/m/files/srv/big");
    println!(
        "fetch, SSH transport (client side)           {t:>8.2} s  {rss:>8.1} MiB  {:>8.1} MiB",
        blocks_mib(&cached)
    );

    fs::write(&config, "max_file_size = 4294967296\n").unwrap();
    let state = d.join("state-dance");
    let (t, rss) = measure(
        disco(&state)
            .env("NOOP", "1")
            .arg("--server")
            .arg(&server)
            .arg("--root")
            .arg(&root)
            .arg("dance"),
    );
    println!("noop dance (copy into the sandbox + diff)    {t:>8.2} s  {rss:>8.1} MiB");
    let (t, rss) = measure(
        disco(&state)
            .arg("--server")
            .arg(&server)
            .arg("--root")
            .arg(&root)
            .arg("dance"),
    );
    println!(
        "live dance (and merge)                       {t:>8.2} s  {rss:>8.1} MiB  {:>8.1} MiB",
        blocks_mib(&root.join("srv/big"))
    );
}
