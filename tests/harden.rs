//! The smaller holes of issue 24 (item 6), one test each, on fixture roots
//! with the real binary, in noop and live: io_uring, `AF_VSOCK` and (noop)
//! the address families no namespace isolates, personas outside Docker's
//! list, the kernel's layout and firmware under `/proc` and `/sys`, core
//! dumps, the host's SysV IPC, and noop's raw sockets and audit writes.
//! A test fails if the attack works.
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::root::FixtureRoot;
use common::{helper, run, Fixture};

/// A fixture with module `probe` (on node `n`) running `script`, with the
/// named helpers in the module's `bin/`.
fn probe(script: &str, helpers: &[&str]) -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["probe"]).module("probe", "");
    f.module_file("probe", "scripts/10-probe", script, 0o755);
    let bin = f.server().join("modules/probe/bin");
    fs::create_dir_all(&bin).unwrap();
    for h in helpers {
        fs::copy(helper(h), bin.join(h)).unwrap();
        fs::set_permissions(bin.join(h), fs::Permissions::from_mode(0o755)).unwrap();
    }
    (f, r)
}

fn live_dance(f: &Fixture, root: &Path) -> (i32, String, String) {
    run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(root)
        .arg("dance"))
}

/// Both dances of `f` on `r`, each of which must succeed: (mode, stdout).
fn both(f: &Fixture, r: &FixtureRoot) -> Vec<(&'static str, String)> {
    [
        ("noop", f.noop_dance("n", &r.path, &[])),
        ("live", live_dance(f, &r.path)),
    ]
    .into_iter()
    .map(|(mode, (code, out, err))| {
        assert_eq!(code, 0, "{mode}: {out}{err}");
        (mode, out)
    })
    .collect()
}

/// What follows `NAME:` on the line of `out` that says it, trimmed.
fn line<'a>(mode: &str, out: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}:");
    out.lines()
        .find_map(|l| {
            l.find(prefix.as_str())
                .map(|at| l[at + prefix.len()..].trim())
        })
        .unwrap_or_else(|| panic!("{mode}: no `{name}` line in {out}"))
}

const EPERM: &str = "refused 1 ";
const EAFNOSUPPORT: &str = "refused 97 ";

#[test]
fn seccomp_refuses_io_uring_vsock_foreign_families_and_personas() {
    let (f, r) = probe("\"$DISCO_MODULE_DIR/bin/harden\"\n", &["harden"]);
    for (mode, out) in both(&f, &r) {
        let l = |name: &str| line(mode, &out, name).to_string();
        assert!(l("io_uring_setup").starts_with(EPERM), "{mode}: {out}");
        assert!(
            l("socket AF_VSOCK").starts_with(EAFNOSUPPORT),
            "{mode}: {out}"
        );
        for persona in ["ADDR_NO_RANDOMIZE", "READ_IMPLIES_EXEC"] {
            let name = format!("personality {persona}");
            assert!(l(name.as_str()).starts_with(EPERM), "{mode}: {out}");
        }
        // The query is allowed, and the persona is still the plain one.
        assert_eq!(l("personality query"), "ok 0", "{mode}: {out}");
        // What scripts use still works.
        assert!(l("socket AF_INET").starts_with("ok"), "{mode}: {out}");
        assert!(l("socket AF_UNIX").starts_with("ok"), "{mode}: {out}");
        if mode == "noop" {
            // AF_XDP: not one the noop sandbox allows (it is refused before
            // the missing CAP_NET_RAW would be).
            assert!(
                l("socket AF_XDP").starts_with(EAFNOSUPPORT),
                "{mode}: {out}"
            );
        }
    }
}

/// Bytes a reader gets from `p` on the host (0 when it is not there).
fn host_bytes(p: &str) -> usize {
    fs::read(p).map(|b| b.len()).unwrap_or(0)
}

#[test]
fn kernel_layout_and_firmware_are_masked() {
    let files = [
        "/proc/kallsyms",
        "/proc/vmallocinfo",
        "/proc/slabinfo",
        "/proc/config.gz",
        "/sys/kernel/vmcoreinfo",
    ];
    let dirs = ["/sys/firmware", "/sys/kernel/debug", "/sys/kernel/security"];
    let mut script = String::new();
    for p in files {
        script += &format!("echo \"{p}: $(cat {p} 2>/dev/null | wc -c)\"\n");
    }
    for d in dirs {
        script += &format!("echo \"{d}: $(ls -A {d} 2>/dev/null | wc -l)\"\n");
    }
    assert!(host_bytes("/proc/kallsyms") > 0, "the host shows kallsyms");
    let (f, r) = probe(&script, &[]);
    for (mode, out) in both(&f, &r) {
        for p in files.iter().chain(dirs.iter()) {
            let shown = line(mode, &out, p);
            let host = if files.contains(p) {
                host_bytes(p)
            } else {
                fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
            };
            if host > 0 {
                assert_eq!(shown, "0", "{mode}: {p} shows {shown} (host {host})");
            }
        }
    }
}

#[test]
fn core_dumps_are_off_and_cannot_be_turned_on() {
    let (f, r) = probe(
        "echo \"soft $(ulimit -Sc) hard $(ulimit -Hc)\"\n(ulimit -Sc unlimited) 2>/dev/null && echo RAISED-SOFT || echo soft-stays\n(ulimit -Hc unlimited) 2>/dev/null && echo RAISED-HARD || echo hard-stays\n",
        &[],
    );
    for (mode, out) in both(&f, &r) {
        assert!(out.contains("soft 0 hard 0\n"), "{mode}: {out}");
        assert!(out.contains("soft-stays\n"), "{mode}: {out}");
        assert!(out.contains("hard-stays\n"), "{mode}: {out}");
    }
}

#[test]
fn each_sandbox_has_its_own_ipc_namespace() {
    let host = fs::read_link("/proc/self/ns/ipc").unwrap();
    let (f, r) = probe("echo \"ipc: $(readlink /proc/self/ns/ipc)\"\n", &[]);
    for (mode, out) in both(&f, &r) {
        let inside = line(mode, &out, "ipc");
        assert!(inside.starts_with("ipc:["), "{mode}: {out}");
        assert_ne!(
            Path::new(inside),
            host,
            "{mode}: the sandbox sees the host's SysV IPC"
        );
    }
}

#[test]
fn noop_has_no_raw_sockets_nor_audit_writes() {
    let (f, r) = probe(
        "grep -E '^(CapPrm|CapEff|CapBnd):' /proc/self/status\n",
        &[],
    );
    const NET_RAW: u64 = 1 << 13;
    const AUDIT_WRITE: u64 = 1 << 29;
    for (mode, out) in both(&f, &r) {
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            let v = u64::from_str_radix(line(mode, &out, set), 16).unwrap();
            if mode == "noop" {
                assert_eq!(v & (NET_RAW | AUDIT_WRITE), 0, "{mode}: {set} {v:x}");
            } else {
                // Live keeps what a package script on the host would have.
                assert_eq!(
                    v & (NET_RAW | AUDIT_WRITE),
                    NET_RAW | AUDIT_WRITE,
                    "{mode}: {set} {v:x}"
                );
            }
        }
    }
}
