//! `noop_network = "host"` (issue 24): a noop sandbox's network is a
//! namespace of its own routed outward through pasta. On fixture roots
//! with the real binary: nothing of the host's own — an abstract Unix
//! socket, a loopback TCP service, its traffic — is reachable from a noop
//! script, which still has a route out; on the real Debian root an
//! `apt-get update` in noop still reaches the mirror, its resolv.conf
//! naming a loopback resolver (127.0.0.53), or none (127.0.0.1), which
//! the namespace answers. A test fails if the attack works.
mod common;

use std::fs;
use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;

use common::root::FixtureRoot;
use common::{helper, Fixture};

const SECRET: &str = "host-secret-7f3a";

#[test]
fn a_noop_script_reaches_no_host_socket_loopback_service_nor_traffic() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    // The host's services: an abstract Unix socket and a loopback TCP
    // port, each saying SECRET to whoever connects.
    let name = format!("disco-test-noop-net-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    unix.set_nonblocking(true).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut served = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((mut s, _)) = unix.accept() {
                    let _ = s.write_all(SECRET.as_bytes());
                    served.push("abstract");
                }
                if let Ok((mut s, _)) = tcp.accept() {
                    let _ = s.write_all(SECRET.as_bytes());
                    served.push("tcp");
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            served
        })
    };
    f.node("n", &["probe"]).module("probe", "");
    f.module_file(
        "probe",
        "scripts/10-probe",
        &format!("echo \"network=$DISCO_NOOP_NETWORK\"\n\"$DISCO_MODULE_DIR/bin/netprobe\" {name} {port}\n"),
        0o755,
    );
    let bin = f.server().join("modules/probe/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(helper("netprobe"), bin.join("netprobe")).unwrap();
    fs::set_permissions(bin.join("netprobe"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(f.config(), "noop_network = \"host\"\n").unwrap();
    let (code, out, err) = f.noop_dance("n", &r.path, &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = served.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("network=host"), "{out}");
    // The namespace is routed outward (the probe ran in host mode).
    assert!(out.contains("route: default via "), "{out}");
    assert!(!out.contains(SECRET), "a host service answered: {out}");
    assert!(served.is_empty(), "the host served {served:?}: {out}");
    for probe in ["abstract", "tcp", "packet"] {
        let l = out
            .lines()
            .find(|l| l.contains(&format!("{probe}: ")))
            .unwrap_or_else(|| panic!("no {probe} line: {out}"));
        assert!(l.contains(&format!("{probe}: refused ")), "{l}\n{out}");
    }
}

#[test]
fn apt_get_update_in_noop_reaches_the_mirror() {
    if !common::debian::mirror_reachable() {
        eprintln!("skipped: the Debian mirror is not reachable (apt-get update must reach it)");
        return;
    }
    let f = Fixture::new();
    let Some(root) = common::debian::root(f.dir.path()) else {
        return;
    };
    f.node("n", &["apt"]).module("apt", "");
    f.module_file(
        "apt",
        "scripts/10-update",
        "apt-get -q -o Acquire::Languages=none -o Acquire::Retries=0 -o Acquire::http::Timeout=20 update 2>&1\necho \"apt-get update: $?\"\n",
        0o755,
    );
    fs::write(f.config(), "noop_network = \"host\"\n").unwrap();
    // A loopback resolver, as systemd-resolved's stub: the namespace's
    // own loopback answers it (the host's is not in the namespace).
    // Then none (the C library asks 127.0.0.1, also what a link into
    // the sandbox's empty /run gives).
    for resolv in [Some("nameserver 127.0.0.53\n"), None] {
        let _ = fs::remove_file(root.join("etc/resolv.conf"));
        if let Some(text) = resolv {
            fs::write(root.join("etc/resolv.conf"), text).unwrap();
        }
        let (code, out, err) = f.noop_dance("n", &root, &[]);
        assert!(code == 0 || code == 2, "{resolv:?}: {out}{err}");
        assert!(out.contains("apt-get update: 0"), "{resolv:?}: {out}{err}");
        assert!(
            !out.contains("Err:") && !out.contains("W: "),
            "{resolv:?}: {out}"
        );
        assert!(
            out.contains("Hit:") || out.contains("Get:"),
            "{resolv:?}: {out}"
        );
    }
}

/// The parent of process `pid`, from /proc (None once it is gone).
fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …: comm may hold spaces, so after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The live processes descending from `ancestor`, with their `comm`.
fn descendants(ancestor: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let mut p = pid;
        while let Some(pp) = parent(p) {
            if pp == ancestor {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                out.push((pid, comm.trim().to_string()));
                break;
            }
            if pp <= 1 {
                break;
            }
            p = pp;
        }
    }
    out
}

#[test]
fn a_killed_disco_leaves_no_pasta_behind() {
    use std::io::BufRead;
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-wait", "echo waiting\nsleep 600\n", 0o755);
    fs::write(f.config(), "noop_network = \"host\"\n").unwrap();
    let mut cmd = f.process(&f.state(), &r.path);
    cmd.env("NOOP", "true")
        .arg("dance")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut disco = cmd.spawn().unwrap();
    let mut lines = std::io::BufReader::new(disco.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("waiting"));
    let helpers = descendants(disco.id());
    common::kill_dance(&mut disco);
    assert!(ready, "the module never started");
    let pasta: Vec<u32> = helpers
        .iter()
        .filter(|(_, c)| c.starts_with("pasta") || c.starts_with("passt"))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(pasta.len(), 1, "{helpers:?}");
    // SIGKILL is delivered at once; its death is seen within a moment.
    let alive = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    for _ in 0..500 {
        if helpers.iter().all(|(p, _)| !alive(*p)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!(
        "left behind: {:?}",
        helpers
            .iter()
            .filter(|(p, _)| alive(*p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn without_pasta_noop_host_is_one_line_naming_the_package_and_the_setting() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-x", "echo ran\n", 0o755);
    fs::write(f.config(), "noop_network = \"host\"\n").unwrap();
    // pasta hidden in a mount namespace of this command's own (gone with it).
    let disco = f.process(&f.state(), &r.path);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("for p in /usr/bin/pasta /usr/sbin/pasta; do [ -e $p ] && mount --bind /dev/null $p; done; exec \"$@\"")
        .arg("sh")
        .arg(disco.get_program())
        .args(disco.get_args())
        .arg("dance")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NOOP", "true")
        .env("NO_COLOR", "1");
    let out = cmd.output().unwrap();
    let (code, stdout, err) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(!stdout.contains("ran"), "{stdout}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        errors,
        ["error: noop_network = \"host\" needs pasta, which is not installed: install the Debian package passt (or set noop_network = \"none\")"],
        "{err}"
    );
}

#[test]
fn a_pasta_that_fails_is_one_line_with_what_it_said() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-x", "echo ran\n", 0o755);
    fs::write(f.config(), "noop_network = \"host\"\n").unwrap();
    let bin = f.dir.path().join("fakebin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(
        bin.join("pasta"),
        "#!/bin/sh\necho 'Failed to open tun socket in namespace' >&2\nexit 1\n",
    )
    .unwrap();
    fs::set_permissions(bin.join("pasta"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = f.process(&f.state(), &r.path);
    let out = cmd
        .arg("dance")
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
        )
        .env("NOOP", "true")
        .output()
        .unwrap();
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{err}");
    assert!(!stdout.contains("ran"), "{stdout}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        errors,
        ["error: noop_network = \"host\": pasta ended before the noop network was up: pasta said: Failed to open tun socket in namespace"],
        "{err}"
    );
}
