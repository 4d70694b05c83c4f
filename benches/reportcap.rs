//! Benchmark: a dance whose module creates 200,000 files (fixture root):
//! noop with the report uncapped (`report_max_changes` and
//! `report_max_bytes` huge: what disco did before the bound), noop with
//! the defaults, and live with the defaults (merged onto a fixture root of
//! its own). Prints disco's peak RSS (`VmHWM` of its main process, and
//! `wait4`'s `ru_maxrss`, which also covers children it reaped), the
//! saved report's size and the wall time, as a table. No assertion.
//!
//! Run as root: `cargo bench --bench reportcap`. Knobs:
//! `DISCO_BENCH_FILES` (200000), `DISCO_BENCH_ROWS` (a comma list of
//! `uncapped`, `capped`, `live`; all by default), `DISCO_BENCH_BIN` (a
//! disco binary to measure instead of this build's, for a before/after).

#[path = "common/workload.rs"]
mod workload;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hwm_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let files: usize = std::env::var("DISCO_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = d.join("server");
    workload::one_module_node(&server, "n", "many");
    workload::write(
        &server.join("modules/many/scripts/10-many"),
        &format!(
            "for ((j = 0; j < {}; j++)); do mkdir -p /opt/many/$j; for ((i = 0; i < 1000; i++)); do echo $i > /opt/many/$j/f$i; done; done\n",
            files / 1000
        ),
        0o755,
    );
    let bin = std::env::var("DISCO_BENCH_BIN").unwrap_or(env!("CARGO_BIN_EXE_disco").into());
    let rows = std::env::var("DISCO_BENCH_ROWS").unwrap_or("uncapped,capped,live".into());
    let fixture = |root: &Path| {
        let st =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-fixture-root"))
                .arg(root)
                .arg(env!("CARGO_BIN_EXE_disco"))
                .output()
                .unwrap();
        assert!(st.status.success(), "make-fixture-root");
    };
    let root = d.join("root");
    fixture(&root);
    println!(
        "a module creating {files} files                      peak RSS (VmHWM)  ru_maxrss   report     wall"
    );
    for (row, what, config) in [
        (
            "uncapped",
            "noop, report uncapped (as before the bound)",
            "report_max_changes = 1000000000\nreport_max_bytes = 1000000000000\n",
        ),
        ("capped", "noop, report capped (defaults)", ""),
        ("live", "live, report capped (defaults), merged", ""),
    ] {
        if !rows.split(',').any(|r| r == row) {
            continue;
        }
        let conf = d.join("disco.toml");
        fs::write(&conf, config).unwrap();
        let state = d.join(format!("state-{row}"));
        let noop = row != "live";
        let root = if noop {
            root.clone()
        } else {
            // Its own root: the merge lands there.
            let live = d.join("live-root");
            fixture(&live);
            live
        };
        let started = Instant::now();
        // Reaped by wait4 below, which also gives its rusage.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(&bin)
            .env("NOOP", if noop { "1" } else { "0" })
            .env_remove("DISCO_SERVER")
            .arg("--config")
            .arg(&conf)
            .arg("--server")
            .arg(&server)
            .args(["--node", "n", "--root"])
            .arg(&root)
            .arg("--state-dir")
            .arg(&state)
            .args(["dance", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut hwm = 0;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let mut status = 0;
        loop {
            if let Some(h) = hwm_kib(pid) {
                hwm = hwm.max(h);
            }
            // SAFETY: waits for our own child, rusage filled by the kernel.
            let r = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid as i32 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let wall = started.elapsed().as_secs_f64();
        let report = fs::metadata(state.join("reports/last.json"))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "{what:<50} {:>10.1} MiB {:>7.1} MiB {:>6.1} MiB {wall:>6.1} s  (exit {})",
            hwm as f64 / 1024.0,
            ru.ru_maxrss as f64 / 1024.0,
            report as f64 / (1 << 20) as f64,
            libc::WEXITSTATUS(status)
        );
    }
}
