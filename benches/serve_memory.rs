//! Benchmark: what `disco serve` holds in memory, per session and for one
//! node key. Runs the real `disco serve --node bench` on pipes (the forced
//! command of a node key, without sshd) over the 20-module workload and
//! prints, for a no-change fetch and for each memory attack a node key
//! could make, the session's peak RSS (`wait4`) and how it ended; then 200
//! concurrent sessions of one key, each queueing just under the queue
//! limit, and the RSS of all serve processes at once (sampled from
//! /proc while they run). docs/fleet.md states the bound from it.
//!
//! Run: `cargo bench --bench serve_memory` (no root needed).

#[path = "common/workload.rs"]
mod workload;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn frame(json: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + json.len());
    f.extend_from_slice(&(json.len() as u32).to_be_bytes());
    f.extend_from_slice(json);
    f.extend_from_slice(&0u32.to_be_bytes());
    f
}

fn msg(v: serde_json::Value) -> Vec<u8> {
    frame(&serde_json::to_vec(&v).unwrap())
}

fn read_frame(r: &mut impl Read) -> Option<serde_json::Value> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut json).ok()?;
    r.read_exact(&mut len).ok()?;
    let mut blob = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut blob).ok()?;
    serde_json::from_slice(&json).ok()
}

fn serve(disco: &Path, root: &Path) -> Child {
    Command::new(disco)
        .arg("serve")
        .arg("--root")
        .arg(root)
        .args(["--node", "bench"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for `child`; its peak RSS in MiB.
fn peak(child: &mut Child) -> f64 {
    let mut status = 0;
    // SAFETY: an rusage we own, for a child of ours.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn hello() -> Vec<u8> {
    msg(
        serde_json::json!({"t": "Hello", "version": 2, "node": "bench", "max_file_size": 1u64 << 30}),
    )
}

/// One session: hello, then `n` frames of `make`, then Bye; peak RSS and
/// how it ended (the server's last message kind).
fn session(
    disco: &Path,
    root: &Path,
    n: usize,
    make: impl Fn(usize) -> Vec<u8> + Send + 'static,
) -> (f64, String) {
    let mut c = serve(disco, root);
    let mut stdin = c.stdin.take().unwrap();
    let mut out = c.stdout.take().unwrap();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&hello());
        for i in 0..n {
            if stdin.write_all(&make(i)).is_err() {
                return;
            }
        }
        let _ = stdin.write_all(&msg(serde_json::json!({"t": "Bye"})));
    });
    let mut last = String::new();
    while let Some(v) = read_frame(&mut out) {
        last = v["t"].as_str().unwrap_or("?").to_string();
        if last == "Error" {
            last = format!("refused: {}", v["message"].as_str().unwrap_or(""));
        }
    }
    w.join().unwrap();
    (peak(&mut c), last)
}

/// Frame `i` of an attack.
type Frames = Box<dyn Fn(usize) -> Vec<u8> + Send>;

/// VmRSS of `pid` in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let disco = Path::new(env!("CARGO_BIN_EXE_disco"));
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("server");
    workload::workload(&root, "bench", 20, false);

    println!(
        "{:<48} {:>10}  ended",
        "one session of a node key", "peak RSS"
    );
    let list = |paths: serde_json::Value| msg(serde_json::json!({"t": "List", "paths": paths}));
    let rows: Vec<(&str, usize, Frames)> = vec![
        (
            "no-change fetch (List of the root)",
            1,
            Box::new(move |_| list(serde_json::json!([""]))),
        ),
        (
            "1,600 Gets of 1 MiB paths",
            1600,
            Box::new(|_| msg(serde_json::json!({"t": "Get", "path": "a".repeat(1 << 20)}))),
        ),
        (
            "one 16 MiB List of empty paths",
            1,
            Box::new(|_| {
                let mut json = br#"{"t":"List","paths":["#.to_vec();
                while json.len() < (16 << 20) - 16 {
                    json.extend_from_slice(br#""","#);
                }
                json.extend_from_slice(br#""""]}"#);
                frame(&json)
            }),
        ),
        (
            "a List of 300,000 empty paths (1 MiB)",
            1,
            Box::new(|_| msg(serde_json::json!({"t": "List", "paths": vec![""; 300_000]}))),
        ),
        (
            "16,000 Deltas of 4000-byte paths, no Flush",
            16_000,
            Box::new(|_| msg(serde_json::json!({"t": "Delta", "path": "a".repeat(4000)}))),
        ),
    ];
    for (name, n, make) in rows {
        let (rss, ended) = session(disco, &root, n, make);
        let ended: String = ended.chars().take(70).collect();
        println!("{name:<48} {rss:>7.1} MiB  {ended}");
    }

    // 200 concurrent sessions of one key, each queueing under the limit.
    let sessions = 200;
    let per = 7_000; // 7,000 frames of 4,284 bytes counted: 28.6 MiB
    let mut children = Vec::new();
    for _ in 0..sessions {
        let mut c = serve(disco, &root);
        let mut stdin = c.stdin.take().unwrap();
        let out = c.stdout.take().unwrap();
        let pid = c.id();
        let w = std::thread::spawn(move || {
            let _ = stdin.write_all(&hello());
            let f = msg(serde_json::json!({"t": "Delta", "path": "a".repeat(4000)}));
            for _ in 0..per {
                if stdin.write_all(&f).is_err() {
                    return None;
                }
            }
            Some(stdin) // held open: the session waits for a Flush
        });
        children.push((c, pid, out, w));
    }
    let started = Instant::now();
    let mut max_total = 0u64;
    let mut live_at_max = 0;
    while started.elapsed() < Duration::from_secs(20) {
        let rss: Vec<u64> = children
            .iter()
            .map(|(_, pid, _, _)| rss_kib(*pid))
            .collect();
        let total: u64 = rss.iter().sum();
        if total > max_total {
            max_total = total;
            live_at_max = rss.iter().filter(|r| **r > 0).count();
        }
        if children.iter().all(|(_, _, _, w)| w.is_finished())
            && started.elapsed() > Duration::from_secs(3)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut held = 0;
    let mut refused = 0;
    for (mut c, _, mut out, w) in children {
        let stdin = w.join().unwrap();
        if stdin.is_some() {
            held += 1;
        }
        drop(stdin);
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
        if String::from_utf8_lossy(&sink).contains("too many sessions") {
            refused += 1;
        }
        let _ = c.wait();
    }
    println!();
    println!(
        "{:<48} {:>10} {:>6} {:>8}",
        "200 concurrent sessions of one key", "all serves", "held", "refused"
    );
    println!(
        "{:<48} {:>6.1} MiB {:>6} {:>8}   ({} alive at the peak)",
        "each 7,000 Deltas (28.6 MiB counted), no Flush",
        max_total as f64 / 1024.0,
        held,
        refused,
        live_at_max
    );
}
