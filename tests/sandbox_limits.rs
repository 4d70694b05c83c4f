//! What a module may hold in memory is bounded (issue 24, item 2): the
//! sandbox's tmpfs (`/tmp`, `/run`, `/dev/shm`) have a size, and a
//! template's output is streamed to its target, capped by
//! `max_file_size`, never held whole. Each test on a fixture root, under
//! an outer limit of its own (`RLIMIT_DATA`, a 60 s kill), so a
//! regression fails the test instead of taking the machine down.
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::root::FixtureRoot;
use common::{bounded, Ended, Fixture};

const MIB: u64 = 1 << 20;

/// `disco … dance` (noop when `noop`) for node `n` on `root`.
fn dance(f: &Fixture, root: &Path, noop: bool) -> Ended {
    let mut c = f.process(&f.state(), root);
    c.arg("dance");
    if noop {
        c.env("NOOP", "true");
    }
    bounded(c)
}

/// The host's `Shmem` (tmpfs and shared memory), bytes.
fn shmem() -> u64 {
    let info = fs::read_to_string("/proc/meminfo").unwrap();
    let line = info.lines().find(|l| l.starts_with("Shmem:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn filling_the_sandboxs_tmpfs_ends_with_enospc_at_their_size() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    // The script ignores ENOSPC, as a careless one would, and says what
    // it managed to write.
    f.module_file(
        "m",
        "scripts/10-fill",
        "#!/bin/bash\nfor d in /tmp /run /dev/shm; do\n  head -c 500M /dev/zero > $d/fill || echo \"full: $d\"\n  echo \"size $d $(stat -c %s $d/fill)\"\ndone\n",
        0o755,
    );
    let before = shmem();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(shmem(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let e = dance(&f, &r.path, true);
    done.store(true, Ordering::Relaxed);
    watch.join().unwrap();
    let all = format!("{}{}", e.out, e.err);
    assert_eq!(e.code, 0, "{all}");
    for (dir, cap) in [
        ("/tmp", 256 * MIB),
        ("/run", 64 * MIB),
        ("/dev/shm", 64 * MIB),
    ] {
        assert!(all.contains(&format!("full: {dir}")), "{all}");
        let line = all
            .lines()
            .find(|l| l.contains(&format!("size {dir} ")))
            .unwrap_or_else(|| panic!("no size of {dir}: {all}"));
        let size: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(size <= cap, "{dir} holds {size} bytes, over {cap}: {all}");
    }
    assert!(all.contains("No space left on device"), "{all}");
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!(
        "host Shmem grew by at most {} MiB during the fill",
        grew / MIB
    );
    assert!(
        grew < (256 + 64 + 64 + 32) * MIB,
        "the host's Shmem grew by {} MiB",
        grew / MIB
    );
}

/// A fixture with module `m` on node `n` holding template `etc/x`, and
/// `config` as disco's config.
fn template(body: &str, config: &str) -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), config).unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "templates/etc/x", body, 0o644);
    (f, r)
}

#[test]
fn a_giant_template_fails_at_max_file_size_without_being_held() {
    let (f, r) = template(
        "head -c 1200M /dev/zero | tr '\\0' x\n",
        "max_file_size = 67108864\n",
    );
    let started = Instant::now();
    let e = dance(&f, &r.path, false);
    let all = format!("{}{}", e.out, e.err);
    assert_ne!(e.code, 0, "{all}");
    let errors: Vec<_> = e.err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{all}");
    assert!(
        errors[0].contains(
            "templates/etc/x: its output is more than the 64.0 MiB it may hold (max_file_size)"
        ),
        "{all}"
    );
    eprintln!(
        "disco's peak RSS {} MiB, ended in {:.1} s",
        e.max_rss / MIB,
        started.elapsed().as_secs_f64()
    );
    assert!(
        e.max_rss < 48 * MIB,
        "disco's peak RSS was {} MiB",
        e.max_rss / MIB
    );
    assert!(!r.path.join("etc/x").exists());
    // No temporary file is left beside the target.
    let left: Vec<_> = fs::read_dir(r.path.join("etc"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("disco-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_template_at_max_file_size_lands_whole() {
    // 1 MiB exactly is allowed, one byte more is not.
    let (f, r) = template(
        "head -c 1M /dev/zero | tr '\\0' y\n",
        "max_file_size = 1048576\n",
    );
    let e = dance(&f, &r.path, false);
    assert_eq!(e.code, 0, "{}{}", e.out, e.err);
    assert_eq!(fs::metadata(r.path.join("etc/x")).unwrap().len(), MIB);
    f.module_file(
        "m",
        "templates/etc/x",
        "head -c 1M /dev/zero | tr '\\0' y; echo\n",
        0o644,
    );
    let e = dance(&f, &r.path, false);
    assert_ne!(e.code, 0, "{}{}", e.out, e.err);
    assert!(e.err.contains("(max_file_size)"), "{}", e.err);
    assert_eq!(fs::metadata(r.path.join("etc/x")).unwrap().len(), MIB);
}

#[test]
fn a_streamed_template_rewrites_only_what_changed() {
    // 3 MiB: the comparison spans many chunks.
    let body =
        |c: char, tail: &str| format!("head -c 3M /dev/zero | tr '\\0' {c}\nprintf '{tail}'\n");
    let (f, r) = template(&body('a', "end\\n"), "");
    let x = r.path.join("etc/x");
    let e = dance(&f, &r.path, false);
    assert_eq!(e.code, 0, "{}{}", e.out, e.err);
    let first = fs::metadata(&x).unwrap();
    assert_eq!(first.len(), 3 * MIB + 4);
    // The same output again: no change, the target untouched.
    let e = dance(&f, &r.path, false);
    assert_eq!(e.code, 0, "{}{}", e.out, e.err);
    assert!(!e.out.contains("etc/x"), "{}", e.out);
    let again = fs::metadata(&x).unwrap();
    assert_eq!(
        (again.ino(), again.mtime_nsec()),
        (first.ino(), first.mtime_nsec())
    );
    // Differing only at the end, shorter, longer: each lands exactly.
    for (tail, len) in [("END\\n", 4), ("e", 1), ("end\\nmore\\n", 9)] {
        f.module_file("m", "templates/etc/x", &body('a', tail), 0o644);
        let e = dance(&f, &r.path, false);
        assert_eq!(e.code, 0, "{}{}", e.out, e.err);
        let got = fs::read(&x).unwrap();
        assert_eq!(got.len() as u64, 3 * MIB + len);
        assert!(got[..3 * MIB as usize].iter().all(|&b| b == b'a'));
        assert_eq!(
            &got[3 * MIB as usize..],
            tail.replace("\\n", "\n").as_bytes()
        );
    }
    // A new mode from attributes alone rewrites it.
    f.module_file("m", "attributes", "/etc/x 0600 root:root\n", 0o644);
    let e = dance(&f, &r.path, false);
    assert_eq!(e.code, 0, "{}{}", e.out, e.err);
    assert_eq!(fs::metadata(&x).unwrap().mode() & 0o7777, 0o600);
}
