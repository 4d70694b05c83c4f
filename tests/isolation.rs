//! A noop dance must not reach the host: each test runs one hostile script
//! in a noop dance against a fixture root and checks the host afterwards.
mod common;

use common::root::{host_mounts_with, FixtureRoot, MountGuard};
use common::Fixture;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::process::Command;

/// Runs `script` as the only step of a noop dance; returns (code, stdout, stderr).
fn dance_script(script: &str) -> (Fixture, FixtureRoot, (i32, String, String)) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["evil"]).module("evil", "");
    f.module_file("evil", "scripts/10-evil", script, 0o755);
    let result = f.noop_dance("n", &r.path, &[]);
    (f, r, result)
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cannot_kill_a_host_process() {
    let mut victim = Command::new("sleep").arg("300").spawn().unwrap();
    let (_f, _r, (code, out, err)) = dance_script(&format!(
        "kill -9 {} && echo KILLED || echo no-such-process\n",
        victim.id()
    ));
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(code, 0, "{out}{err}");
    assert!(alive, "the host process must survive");
    assert!(out.contains("no-such-process"), "{out}");
}

#[test]
fn cannot_change_the_hostname() {
    let before = nix::unistd::gethostname().unwrap();
    let (_f, _r, (code, out, err)) =
        dance_script("hostname evil-disco-test || true\necho \"inside: $(hostname)\"\n");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(nix::unistd::gethostname().unwrap(), before);
}

#[test]
fn cannot_touch_the_host_network() {
    let before = sh("ip -o addr show dev lo; ip -o link show dev lo");
    let (_f, _r, (code, out, err)) = dance_script(
        "ip link set lo down || true\nip addr add 10.254.254.1/32 dev lo || true\nip link add disco-evil type dummy || true\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(sh("ip -o addr show dev lo; ip -o link show dev lo"), before);
    assert!(!sh("ip -o link").contains("disco-evil"));
}

#[test]
fn noop_modules_share_a_loopback_only_network_that_none_can_change() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["first", "second"])
        .module("first", "")
        .module("second", "after first\n");
    f.module_file(
        "first",
        "scripts/10-x",
        "ip link set lo down || true\nip link add disco-evil type dummy || true\n",
        0o755,
    )
    .module_file(
        "second",
        "scripts/10-x",
        "echo \"links: $(ls /sys/class/net | tr '\\n' ' ')\"\nip -o link show lo | grep -q ',UP' && echo 'lo: up'\n",
        0o755,
    );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("links: lo \n"), "{out}");
    assert!(out.contains("lo: up\n"), "{out}");
    assert!(!sh("ip -o link").contains("disco-evil"));
}

#[test]
fn cannot_write_sysctls() {
    let before = fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    let other = if before.trim() == "17" { "18" } else { "17" };
    let (_f, _r, (code, out, err)) = dance_script(&format!(
        "sysctl -w vm.swappiness={other} || true\necho {other} > /proc/sys/vm/swappiness || true\n"
    ));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        before
    );
}

#[test]
fn cannot_mount_or_unmount() {
    let (f, r, _) = dance_script("true\n");
    let mnt = r.path.join("mnt/keep");
    let _guard = MountGuard::tmpfs(&mnt);
    f.module_file(
        "evil",
        "scripts/10-evil",
        "mkdir -p /tmp/m; mount -t tmpfs disco-evil-mount /tmp/m || true\numount -l /mnt/keep || true\numount -l /proc || true\n",
        0o755,
    );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(host_mounts_with("disco-evil-mount").is_empty());
    assert_eq!(
        host_mounts_with(mnt.to_str().unwrap()).len(),
        1,
        "the fixture's own mount is still there"
    );
}

#[test]
fn reboot_is_shimmed() {
    let (f, _r, (code, out, err)) =
        dance_script("reboot\n/sbin/reboot -f\nsystemctl restart nginx\n");
    assert_eq!(code, 0, "{out}{err}");
    // Queued, not run; the module changed nothing, so noop says the live
    // dance would skip them (a module that changes nothing runs none).
    assert!(
        err.contains("info: would skip reboot (evil changed nothing)\n"),
        "{err}"
    );
    assert!(
        err.contains("info: would skip reboot -f (evil changed nothing)\n"),
        "{err}"
    );
    assert!(
        err.contains("info: would skip systemctl restart nginx (evil changed nothing)\n"),
        "{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    let actions = &report["modules"][0]["actions"];
    assert_eq!(actions[1][1], "-f");
    assert!(actions[2][0].as_str().unwrap().ends_with("/systemctl"));
    assert_eq!(
        (&actions[2][1], &actions[2][2]),
        (&serde_json::json!("restart"), &serde_json::json!("nginx"))
    );
}

#[test]
fn cannot_connect_to_a_host_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_f, _r, (code, out, err)) = dance_script(&format!(
        "(echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED || echo REFUSED\n"
    ));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("REFUSED"), "{out}");
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing reached the listener"
    );
}

#[test]
fn writes_under_a_mounted_dir_land_in_the_overlay() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let data = r.path.join("var/data");
    let _guard = MountGuard::tmpfs(&data);
    f.node("n", &["evil"]).module("evil", "");
    f.module_file(
        "evil",
        "scripts/10-evil",
        "echo leaked > /var/data/leak\n",
        0o755,
    );
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!data.join("leak").exists());
    assert!(err.contains("File: /var/data/leak : Created"), "{err}");
}

#[test]
fn dev_is_private_and_minimal() {
    let (_f, _r, (code, out, err)) = dance_script(
        "ls /dev | tr '\\n' ' '; echo\necho x > /dev/null\ntouch /dev/disco-evil-node\nmknod /dev/disco-evil-blk b 8 0 2>/dev/null || echo mknod-refused\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("mknod-refused"), "{out}");
    assert!(out.contains("full null ptmx pts random shm"), "{out}");
    assert!(!std::path::Path::new("/dev/disco-evil-node").exists());
    assert!(!std::path::Path::new("/dev/disco-evil-blk").exists());
}
