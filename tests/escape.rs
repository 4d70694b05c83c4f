//! The ways out of the sandbox a hostile module author found, one test
//! each: every test runs the attack for real (static helpers built here
//! with the system C compiler from `tests/helpers/*.c`) in a dance on a
//! fixture root, then checks the host. A test fails if the escape works.
mod common;

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::root::{host_mounts_with, FixtureRoot};
use common::{helper, run, Fixture};

/// A fixture with module `evil` (on node `n`) running `script`, with the
/// named helpers in the module's `bin/`.
fn evil(script: &str, helpers: &[&str]) -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["evil"]).module("evil", "");
    f.module_file("evil", "scripts/10-evil", script, 0o755);
    let bin = f.server().join("modules/evil/bin");
    fs::create_dir_all(&bin).unwrap();
    for h in helpers {
        fs::copy(helper(h), bin.join(h)).unwrap();
        fs::set_permissions(bin.join(h), fs::Permissions::from_mode(0o755)).unwrap();
    }
    (f, r)
}

fn live_dance(f: &Fixture, root: &Path, args: &[&str]) -> (i32, String, String) {
    run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(root)
        .arg("dance")
        .args(args))
}

#[test]
fn file_handles_do_not_open_the_host_filesystem() {
    // The marker is a path from the host's root: where the escape would write.
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("escaped");
    let rel = marker.strip_prefix("/").unwrap().display().to_string();
    let (f, r) = evil(
        &format!("\"$DISCO_MODULE_DIR/bin/handle\" {rel} || true\n"),
        &["handle"],
    );
    for (mode, (code, out, err)) in [
        ("noop", f.noop_dance("n", &r.path, &[])),
        ("live", live_dance(&f, &r.path, &[])),
    ] {
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert!(!out.contains("ESCAPED"), "{mode}: {out}");
        assert!(
            !out.contains("INHERITED"),
            "{mode}: a host fd reached the script: {out}"
        );
        assert!(out.contains("blocked /run/disco/module"), "{mode}: {out}");
        assert!(!marker.exists(), "{mode}: the script wrote on the host");
    }
}

#[test]
fn capabilities_are_an_allow_list_with_no_new_privs_and_seccomp() {
    let (f, r) = evil(
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status\nls /proc/self/fd | tr '\\n' ' '; echo\nreadlink /proc/1/fd/0 >/dev/null 2>&1 && echo INIT-FDS-OPEN || echo init-fds-closed\n",
        &[],
    );
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT AUDIT_WRITE SETFCAP
    let allowed: u64 = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31]
        .iter()
        .map(|b| 1u64 << b)
        .sum();
    for (mode, (code, out, err)) in [
        ("noop", f.noop_dance("n", &r.path, &[])),
        ("live", live_dance(&f, &r.path, &[])),
    ] {
        assert_eq!(code, 0, "{mode}: {out}{err}");
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            let line = out
                .lines()
                .find(|l| l.starts_with(set))
                .unwrap_or_else(|| panic!("{mode}: no {set} in {out}"));
            let v = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
            assert_eq!(
                v & !allowed,
                0,
                "{mode}: {line} has more than the allow-list"
            );
            assert_ne!(v & (1 << 1), 0, "{mode}: DAC_OVERRIDE is needed: {line}");
        }
        assert!(out.contains("CapAmb:\t0000000000000000"), "{mode}: {out}");
        assert!(out.contains("NoNewPrivs:\t1"), "{mode}: {out}");
        assert!(out.contains("Seccomp:\t2"), "{mode}: {out}");
        // bash's own 0, 1, 2 and the one ls opens on /proc/self/fd.
        assert!(out.contains("\n0 1 2 3 \n"), "{mode}: {out}");
        assert!(out.contains("init-fds-closed"), "{mode}: {out}");
    }
}

#[test]
fn the_queue_is_untrusted_data() {
    // A host file the old `queue/output` symlink made disco print and truncate.
    let f0 = tempfile::tempdir().unwrap();
    let secret = f0.path().join("secret");
    fs::write(&secret, "TOPSECRET\n").unwrap();
    let (f, r) = evil(
        &format!(
            "ls -A /run/disco/queue\nln -sf {s} /run/disco/queue/output\nrm -f /run/disco/queue/actions\nln -s /dev/zero /run/disco/queue/actions\necho changed > /etc/evil\n",
            s = secret.display()
        ),
        &[],
    );
    let started = Instant::now();
    let (code, out, err) = f.noop_dance("n", &r.path, &["--quiet"]);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("the action queue /run/disco/queue/actions was replaced by a symbolic link"),
        "{err}"
    );
    assert!(!out.contains("TOPSECRET") && !err.contains("TOPSECRET"));
    assert_eq!(fs::read_to_string(&secret).unwrap(), "TOPSECRET\n");

    // A FIFO in its place neither hangs the dance nor holds the lock.
    f.module_file(
        "evil",
        "scripts/10-evil",
        "rm -f /run/disco/queue/actions\nmkfifo /run/disco/queue/actions\n",
        0o755,
    );
    let started = Instant::now();
    let (code, _out, err) = f.noop_dance("n", &r.path, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the dance hung"
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("was replaced by a fifo"), "{err}");
}

/// Runs `disco` on the slave of a new pty that is its controlling
/// terminal; returns (exit code, what reached the terminal's input queue
/// afterwards — what the admin's shell would read and run).
fn dance_on_a_terminal(cmd: &mut Command) -> (i32, String, String) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave.as_raw_fd();
    // SAFETY: dup/ioctl between fork and exec.
    unsafe {
        cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave.try_clone().unwrap()))
            .pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
    }
    let master = fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&out).contains("DISCO-DONE") {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let mut child = cmd.spawn().unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    // Tell the drain thread to stop: write a sentinel through the slave.
    let mut s = fs::File::from(pty.slave.try_clone().unwrap());
    std::io::Write::write_all(&mut s, b"DISCO-DONE\r\n").unwrap();
    let shown = drain.join().unwrap();
    // What is waiting in the terminal's input queue.
    nix::fcntl::fcntl(
        slave,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(slave, &mut buf) {
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
    }
    (code, shown, String::from_utf8_lossy(&pending).into_owned())
}

#[test]
fn no_keystroke_reaches_the_terminal() {
    let (f, r) = evil("\"$DISCO_MODULE_DIR/bin/tiocsti\"\n", &["tiocsti"]);
    for mode in ["noop", "live"] {
        let mut cmd = f.process(&f.state(), &r.path);
        cmd.arg("dance");
        if mode == "noop" {
            cmd.env("NOOP", "true");
        }
        let (code, shown, pending) = dance_on_a_terminal(&mut cmd);
        assert_eq!(code, 0, "{mode}: {shown}");
        assert!(shown.contains("not injected 0"), "{mode}: {shown}");
        assert!(
            !pending.contains("disco-pwned"),
            "{mode}: the script typed into the admin's terminal: {pending:?}"
        );
    }
}

/// Kernel log records (`/dev/kmsg`) that contain `needle`.
fn kernel_log_has(needle: &str) -> bool {
    let Ok(mut kmsg) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if String::from_utf8_lossy(&buf[..n]).contains(needle) {
                    return true;
                }
            }
            // EPIPE: a record was overwritten while reading; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn device_nodes_in_root_do_not_open() {
    // A device node of the root outside /dev (old chroots have them): here
    // the kernel log's, so a write through it is seen and harmless.
    let nonce = format!("disco-escape-device-{}", std::process::id());
    let (f, r) = evil(
        &format!("echo {nonce} > /srv/kmsg && echo DEVICE-WRITTEN || echo device-refused\n"),
        &[],
    );
    fs::create_dir_all(r.path.join("srv")).unwrap();
    nix::sys::stat::mknod(
        &r.path.join("srv/kmsg"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 11),
    )
    .unwrap();
    for (mode, (code, out, err)) in [
        ("noop", f.noop_dance("n", &r.path, &[])),
        ("live", live_dance(&f, &r.path, &[])),
    ] {
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert!(out.contains("device-refused"), "{mode}: {out}{err}");
        assert!(
            !kernel_log_has(&nonce),
            "{mode}: the write reached the device"
        );
    }
}

/// `keyctl(KEYCTL_SEARCH)` for a user key in the caller's user keyring.
fn host_has_key(desc: &str) -> bool {
    let ty = std::ffi::CString::new("user").unwrap();
    let d = std::ffi::CString::new(desc).unwrap();
    // SAFETY: keyctl with valid C strings.
    let id = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            10, // KEYCTL_SEARCH
            -4, // KEY_SPEC_USER_KEYRING
            ty.as_ptr(),
            d.as_ptr(),
            0,
        )
    };
    if id >= 0 {
        // SAFETY: as above; unlink the planted key from the keyring.
        unsafe { libc::syscall(libc::SYS_keyctl, 9, id, -4) };
    }
    id >= 0
}

#[test]
fn the_host_keyring_is_out_of_reach() {
    let desc = format!("disco-escape-{}", std::process::id());
    let (f, r) = evil(
        &format!("\"$DISCO_MODULE_DIR/bin/keyring\" {desc} || true\n"),
        &["keyring"],
    );
    for (mode, (code, out, err)) in [
        ("noop", f.noop_dance("n", &r.path, &[])),
        ("live", live_dance(&f, &r.path, &[])),
    ] {
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert!(out.contains("add_key refused"), "{mode}: {out}");
        assert!(
            !host_has_key(&desc),
            "{mode}: a key was planted on the host"
        );
    }
}

#[test]
fn host_proc_knobs_are_masked_or_read_only() {
    let (f, r) = evil(
        "for k in /proc/irq/*/smp_affinity; do [ -e \"$k\" ] && (cat \"$k\" > \"$k\") 2>/dev/null && echo \"WROTE $k\"; done\n(echo h > /proc/sysrq-trigger) 2>/dev/null && echo SYSRQ-WRITTEN\nls -A /proc/irq | wc -l\n(echo 60 > /proc/sys/vm/swappiness) 2>/dev/null && echo SYSCTL-WRITTEN\necho \"self: $(cat /proc/self/comm)\"\ntrue\n",
        &[],
    );
    for (mode, (code, out, err)) in [
        ("noop", f.noop_dance("n", &r.path, &[])),
        ("live", live_dance(&f, &r.path, &[])),
    ] {
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert!(!out.contains("WROTE"), "{mode}: {out}");
        assert!(!out.contains("SYSRQ-WRITTEN"), "{mode}: {out}");
        assert!(!out.contains("SYSCTL-WRITTEN"), "{mode}: {out}");
        assert!(
            out.lines().any(|l| l == "0"),
            "{mode}: /proc/irq is masked: {out}"
        );
        assert!(out.contains("self: cat"), "{mode}: /proc/self works: {out}");
    }
}

/// Processes of this test's chain still alive, by their script's name.
fn chain_processes(name: &str) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(name))
        .collect()
}

#[test]
fn no_process_outlives_a_live_dance() {
    let name = format!("10-chain-{}", std::process::id());
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["evil"]).module("evil", "");
    // A chain of 130 background subshells, each waiting for the next (so
    // killing one orphans only the next); the deepest writes forever.
    f.module_file(
        "evil",
        &format!("scripts/{name}"),
        "mkdir -p /opt\nf() { if [ \"$1\" -gt 0 ]; then f $(( $1 - 1 )) & wait; else while :; do echo x >> /opt/grow; sleep 0.05; done; fi; }\nf 130 &\nwhile [ ! -s /opt/grow ]; do sleep 0.05; done\n",
        0o755,
    );
    let (code, out, err) = live_dance(&f, &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("killed"), "the leftovers are reported: {err}");
    let merged = fs::read_to_string(r.path.join("opt/grow")).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    let diff = report["modules"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/opt/grow")
        .unwrap()["diff"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        diff.lines().filter(|l| *l == "+x").count(),
        merged.lines().count(),
        "the report tells what landed"
    );
    assert!(
        chain_processes(&name).is_empty(),
        "{:?}",
        chain_processes(&name)
    );
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        fs::read_to_string(r.path.join("opt/grow")).unwrap(),
        merged,
        "nothing writes into the root after the dance"
    );
    assert!(chain_processes(&name).is_empty());
}

#[test]
fn the_state_dir_inside_root_is_hidden_and_untouchable() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let state = r.path.join("var/lib/disco");
    f.node("n", &["evil"]).module("evil", "");
    f.module_file(
        "evil",
        "scripts/10-evil",
        "echo \"seen: $(ls -A /var/lib/disco | wc -l)\"\nrm -rf /var/lib/disco 2>/dev/null\ntouch /var/lib/disco/planted 2>/dev/null && echo PLANTED\necho ok > /etc/evil-ran\ntrue\n",
        0o755,
    );
    let disco = |noop: bool| {
        let mut c = f.disco_with_state(&state);
        c.arg("--server").arg(f.server());
        if noop {
            c.env("NOOP", "true");
        }
        run(c.args(["--node", "n", "--root"]).arg(&r.path).arg("dance"))
    };
    for noop in [true, false] {
        let (code, out, err) = disco(noop);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("seen: 0"), "{out}");
        assert!(!out.contains("PLANTED"), "{out}");
        assert!(
            state.join("reports/last.json").is_file(),
            "the state dir is intact"
        );
    }
    assert_eq!(r.read("etc/evil-ran").as_deref(), Some("ok\n"));

    // A file of the module aimed at the state dir is refused, by name.
    f.module_file("evil", "scripts/10-evil", "true\n", 0o755);
    f.module_file("evil", "files/var/lib/disco/planted", "x\n", 0o644);
    let (code, out, err) = disco(false);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "refusing to write /var/lib/disco/planted: /var/lib/disco is disco's state dir"
        ),
        "{err}"
    );
    assert!(!state.join("planted").exists());
}

#[test]
fn a_killed_dance_leaves_no_mount_on_the_host() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    // The state dir inside ROOT: the layers are in an in-memory tmpfs.
    let state = r.path.join("var/lib/disco");
    f.node("n", &["slow"]).module("slow", "");
    f.module_file(
        "slow",
        "scripts/10-slow",
        "echo started > /etc/slow\nsleep 60\n",
        0o755,
    );
    let mut child = f
        .process(&state, &r.path)
        .arg("dance")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let run_dir = state.join("run");
    let deadline = Instant::now() + Duration::from_secs(30);
    let scratch_in_disco = loop {
        let theirs = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        if theirs.contains(run_dir.to_str().unwrap()) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Give the script time to start.
    std::thread::sleep(Duration::from_millis(500));
    let host_during = host_mounts_with(run_dir.to_str().unwrap());
    common::kill_dance(&mut child);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        scratch_in_disco,
        "the in-memory scratch was mounted in disco's namespace"
    );
    assert!(host_during.is_empty(), "{host_during:?}");
    assert!(host_mounts_with(run_dir.to_str().unwrap()).is_empty());
    assert!(host_mounts_with("disco-scratch").is_empty());
    assert!(!r.path.join("etc/slow").exists(), "nothing was merged");
    // The next dance goes through.
    f.module_file("slow", "scripts/10-slow", "echo done > /etc/slow\n", 0o755);
    let (code, out, err) = run(f
        .disco_with_state(&state)
        .arg("--server")
        .arg(f.server())
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .arg("dance"));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(r.read("etc/slow").as_deref(), Some("done\n"));
}
