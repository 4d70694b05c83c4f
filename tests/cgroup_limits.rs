//! A module cannot exhaust its node (issue 24, item 1): every sandbox runs
//! in a cgroup of its own with `pids.max` (`max_processes`) and
//! `memory.max` (`max_memory`); a step that hits either ends its module
//! with one line naming the limit, in noop and live, for scripts and
//! templates alike. Each test runs disco inside an outer cgroup of its
//! own ([`common::outer::Outer`]) with looser limits, and fails if that
//! outer limit is ever hit: disco's own limits must act first.
mod common;

use std::fs;
use std::path::Path;
use std::time::Instant;

use common::outer::Outer;
use common::root::FixtureRoot;
use common::{bounded, Ended, Fixture};

const MIB: u64 = 1 << 20;

/// The outer limits: far above disco's of the test, far below harm.
const OUTER_PIDS: u64 = 3000;
const OUTER_MEMORY: u64 = 1536 * MIB;

fn dance(f: &Fixture, root: &Path, noop: bool, outer: &Outer) -> (Ended, f64) {
    let mut c = f.process(&f.state(), root);
    c.arg("dance");
    if noop {
        c.env("NOOP", "true");
    }
    outer.wrap(&mut c);
    let started = Instant::now();
    let e = bounded(c);
    (e, started.elapsed().as_secs_f64())
}

fn fixture(config: &str) -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), config).unwrap();
    f.node("n", &["m"]).module("m", "");
    (f, r)
}

/// Runs the dance in both modes, checks the line and that the outer
/// limit never acted and no cgroup was left; returns the seconds each took.
fn ends_with(f: &Fixture, r: &FixtureRoot, line: &str) -> Vec<f64> {
    let mut took = Vec::new();
    for noop in [true, false] {
        let outer = Outer::new(OUTER_PIDS, OUTER_MEMORY);
        let (e, secs) = dance(f, &r.path, noop, &outer);
        let all = format!("{}{}", e.out, e.err);
        assert_eq!(e.code, 1, "noop {noop}: {all}");
        assert!(all.contains(line), "noop {noop}: no {line:?} in: {all}");
        // Thousands of processes killed are said in a line of sense.
        assert!(all.lines().all(|l| l.len() < 2000), "noop {noop}: {all}");
        assert_eq!(
            outer.hits(),
            (0, 0),
            "noop {noop}: the outer limit acted (forks refused, OOM kills): {all}"
        );
        assert_eq!(outer.children(), Vec::<String>::new(), "cgroups left");
        eprintln!("noop {noop}: ended in {secs:.1} s");
        took.push(secs);
    }
    // A live dance that failed merged nothing.
    assert!(!r.path.join("etc/x").exists());
    took
}

#[test]
fn a_fork_bomb_ends_at_max_processes() {
    let (f, r) = fixture("max_processes = 200\n");
    f.module_file(
        "m",
        "scripts/10-bomb",
        "#!/bin/bash\nb() { b | b & }\nb\nwait\nsleep 600\n",
        0o755,
    );
    ends_with(
        &f,
        &r,
        "error: m: scripts/10-bomb: more than 200 processes (max_processes)",
    );
}

#[test]
fn a_memory_hog_script_ends_at_max_memory() {
    let (f, r) = fixture("max_memory = 67108864\n");
    // bash holds a command substitution whole: 400 MiB of it.
    f.module_file(
        "m",
        "scripts/10-hog",
        "#!/bin/bash\nx=$(head -c 400M /dev/zero | tr '\\0' x)\necho ${#x}\n",
        0o755,
    );
    ends_with(
        &f,
        &r,
        "error: m: scripts/10-hog: killed at the memory limit of 64 MiB (max_memory)",
    );
}

#[test]
fn a_memory_hog_template_ends_at_max_memory() {
    let (f, r) = fixture("max_memory = 67108864\n");
    f.module_file(
        "m",
        "templates/etc/x",
        "x=$(head -c 400M /dev/zero | tr '\\0' x)\necho ${#x}\n",
        0o644,
    );
    ends_with(
        &f,
        &r,
        "error: m: templates/etc/x: killed at the memory limit of 64 MiB (max_memory)",
    );
}

#[test]
fn within_the_limits_a_module_runs_and_leaves_no_cgroup() {
    let (f, r) = fixture("max_processes = 200\nmax_memory = 268435456\n");
    // 50 processes at once, 100 MiB held: well within.
    f.module_file(
        "m",
        "scripts/10-work",
        "#!/bin/bash\nfor i in $(seq 50); do sleep 0.5 & done\nwait\nx=$(head -c 100M /dev/zero | tr '\\0' x)\necho ${#x} > /etc/x\n",
        0o755,
    );
    let outer = Outer::new(OUTER_PIDS, OUTER_MEMORY);
    let (e, _) = dance(&f, &r.path, false, &outer);
    assert_eq!(e.code, 0, "{}{}", e.out, e.err);
    assert_eq!(
        fs::read_to_string(r.path.join("etc/x")).unwrap(),
        "104857600\n"
    );
    assert_eq!(outer.children(), Vec::<String>::new(), "cgroups left");
}

#[test]
fn the_sandbox_sees_only_its_own_cgroup() {
    let (f, r) = fixture("");
    f.module_file(
        "m",
        "scripts/10-look",
        "#!/bin/bash\necho \"cgroup: $(cat /proc/self/cgroup | tr '\\n' ' ')\"\necho \"adj: $(cat /proc/self/oom_score_adj)\"\n",
        0o755,
    );
    let outer = Outer::new(OUTER_PIDS, OUTER_MEMORY);
    let (e, _) = dance(&f, &r.path, true, &outer);
    let all = format!("{}{}", e.out, e.err);
    assert_eq!(e.code, 0, "{all}");
    let line = all.lines().find(|l| l.contains("cgroup: ")).unwrap();
    // A cgroup namespace: every hierarchy's path is its root.
    for entry in line.split("cgroup: ").nth(1).unwrap().split_whitespace() {
        assert!(entry.ends_with(":/"), "{entry} in {line}");
    }
    assert!(all.contains("adj: 1000"), "{all}");
}

#[test]
fn without_a_writable_cgroup_tree_the_dance_warns_once_and_runs() {
    // A container whose controllers are mounted read-only, made here in a
    // private mount namespace of the dance's own (the host's mounts stay).
    let (f, r) = fixture("");
    f.module_file(
        "m",
        "scripts/10-ok",
        "#!/bin/bash\necho ran > /etc/x\n",
        0o755,
    );
    let mut remount = String::new();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for dir in if v2 {
        vec!["/sys/fs/cgroup"]
    } else {
        vec!["/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory"]
    } {
        remount.push_str(&format!("mount -o remount,ro,bind {dir} && "));
    }
    // The dance, in a mount namespace of its own where those are read-only.
    let readonly_dance = |outer: &Outer| {
        let inner = f.process(&f.state(), &r.path);
        let mut c = std::process::Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!("{remount}exec \"$0\" \"$@\" dance"))
            .arg(inner.get_program())
            .args(inner.get_args())
            .env("NO_COLOR", "1")
            .env_remove("NOOP");
        outer.wrap(&mut c);
        bounded(c)
    };
    let outer = Outer::new(OUTER_PIDS, OUTER_MEMORY);
    let e = readonly_dance(&outer);
    let all = format!("{}{}", e.out, e.err);
    assert_eq!(e.code, 0, "{all}");
    let warnings: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("run without max_processes and max_memory"))
        .collect();
    assert_eq!(warnings.len(), 1, "{all}");
    assert!(
        warnings[0].starts_with("warning: ") && warnings[0].contains("Read-only file system"),
        "{all}"
    );
    assert_eq!(fs::read_to_string(r.path.join("etc/x")).unwrap(), "ran\n");

    // Limits off in the config: nothing to say.
    fs::write(f.config(), "max_processes = 0\nmax_memory = 0\n").unwrap();
    fs::remove_file(r.path.join("etc/x")).unwrap();
    let e = readonly_dance(&outer);
    let all = format!("{}{}", e.out, e.err);
    assert_eq!(e.code, 0, "{all}");
    assert!(!all.contains("max_processes"), "{all}");
}

#[test]
fn tmpfs_pages_count_against_max_memory() {
    // One budget: what a module keeps in its tmpfs is memory of its
    // sandbox. /tmp may hold 256 MiB; max_memory is 96 MiB.
    let (f, r) = fixture("max_memory = 100663296\n");
    f.module_file(
        "m",
        "scripts/10-fill",
        "#!/bin/bash\nhead -c 200M /dev/zero > /tmp/fill\necho \"size $(stat -c %s /tmp/fill)\"\n",
        0o755,
    );
    ends_with(&f, &r, "killed at the memory limit of 96 MiB (max_memory)");
}
