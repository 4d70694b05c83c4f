//! The SSH transport end to end: a private sshd, the real ssh client, the
//! real binary on both sides.
mod common;

use common::sshd::{forced, keygen, Sshd};
use common::{run, snapshot, Fixture};
use std::fs;
use std::path::{Path, PathBuf};

/// A fixture whose config points at `sshd` with `key`.
fn client(f: &Fixture, sshd: &Sshd, key: &Path) {
    fs::write(f.config(), sshd.client_config(key)).unwrap();
}

fn plan_over(f: &Fixture, uri: &str, node: &str) -> (i32, String, String) {
    run(f
        .disco_without_server()
        .args(["--server", uri, "--node", node, "plan"]))
}

struct Setup {
    f: Fixture,
    sshd: Sshd,
    key_a: PathBuf,
    key_admin: PathBuf,
}

/// Server tree with nodes a and b; a key for node a (forced), one admin key.
fn setup() -> Setup {
    let f = Fixture::new();
    f.node("a", &["common", "only-a"])
        .node("b", &["common", "only-b"]);
    f.module("common", "")
        .module("only-a", "")
        .module("only-b", "")
        .module("stray", "");
    f.file("parameters/a/parameters/secret", "a-secret\n")
        .file("parameters/b/parameters/secret", "b-secret\n")
        .file("modules/common/files/etc/common.conf", "c\n")
        .file("modules/only-b/files/etc/b.conf", "b\n");
    std::os::unix::fs::symlink(
        "common.conf",
        f.server().join("modules/common/files/etc/link"),
    )
    .unwrap();
    let keys = f.dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let key_a = keys.join("a");
    let key_admin = keys.join("admin");
    let pub_a = keygen(&key_a);
    let pub_admin = keygen(&key_admin);
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[
            forced(&pub_a, &f.server(), Some("a")),
            forced(&pub_admin, &f.server(), None),
        ],
    );
    client(&f, &sshd, &key_a);
    Setup {
        f,
        sshd,
        key_a,
        key_admin,
    }
}

#[test]
fn fetch_over_ssh_equals_the_local_fetch() {
    let s = setup();
    let uri = s.sshd.uri(s.f.server().to_str().unwrap());
    let (code, out, err) = plan_over(&s.f, &uri, "a");
    assert_eq!((code, out.as_str()), (0, "common\nonly-a\n"), "{err}");
    assert!(err.contains("fetch from ssh://root@127.0.0.1:"), "{err}");
    // Over ssh, each module and parameter layer is a symlink into the
    // store; its content must equal the local transport's real directory.
    let units = ["modules/common", "modules/only-a", "parameters/a"];
    let over_ssh: Vec<_> = units
        .iter()
        .map(|u| snapshot(&s.f.cache().join(u)))
        .collect();
    assert!(fs::symlink_metadata(s.f.cache().join("modules/common"))
        .unwrap()
        .file_type()
        .is_symlink());
    let (code, _, err) = plan_over(&s.f, s.f.server().to_str().unwrap(), "a");
    assert_eq!(code, 0, "{err}");
    let local: Vec<_> = units
        .iter()
        .map(|u| snapshot(&s.f.cache().join(u)))
        .collect();
    assert_eq!(local, over_ssh);
    let (_, out, _) = run(s
        .f
        .disco_without_server()
        .args(["--node", "a", "param", "get", "secret"]));
    assert_eq!(out, "a-secret\n");
}

#[test]
fn no_change_fetch_costs_one_round_trip() {
    let s = setup();
    let uri = s.sshd.uri(s.f.server().to_str().unwrap());
    assert_eq!(plan_over(&s.f, &uri, "a").0, 0);
    let (code, _, err) = plan_over(&s.f, &uri, "a");
    assert_eq!(code, 0, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("unchanged"))
        .unwrap_or_else(|| panic!("{err}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let (sent, received) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    assert!(sent + received < 400, "{line}");
}

#[test]
fn one_byte_change_in_a_mebibyte_moves_a_small_delta() {
    let s = setup();
    let mut big: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(s.f.server().join("modules/common/files/big.bin"), &big).unwrap();
    let uri = s.sshd.uri(s.f.server().to_str().unwrap());
    assert_eq!(plan_over(&s.f, &uri, "a").0, 0);
    big[512 * 1024] ^= 0xff;
    fs::write(s.f.server().join("modules/common/files/big.bin"), &big).unwrap();
    let (code, _, err) = plan_over(&s.f, &uri, "a");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("0 file(s) whole, 1 by delta"), "{err}");
    let line = err.lines().find(|l| l.contains("by delta")).unwrap();
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let (sent, received) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    assert!(sent + received < 32 * 1024, "{line}");
    assert_eq!(
        fs::read(s.f.cache().join("modules/common/files/big.bin")).unwrap(),
        big
    );
}

#[test]
fn a_node_key_sees_only_its_own_view() {
    let s = setup();
    let uri = s.sshd.uri(s.f.server().to_str().unwrap());
    // Asking for node b with a's key.
    let (code, _, err) = plan_over(&s.f, &uri, "b");
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!("error: server {uri}: server refused: this key may fetch only node 'a'\n")
    );
    // What a gets holds nothing of b.
    assert_eq!(plan_over(&s.f, &uri, "a").0, 0);
    assert!(!s.f.cache().join("parameters/b").exists());
    assert!(!s.f.cache().join("modules/only-b").exists());
    assert!(!s.f.cache().join("modules/stray").exists());
    // A raw session asking for b's file or ../ is refused, and logged.
    for path in [
        "parameters/b/parameters/secret",
        "modules/stray/requires",
        "../etc/passwd",
        "modules/common/../../parameters/b",
    ] {
        let err = raw_get(&s, path);
        assert!(err.contains("server refused"), "{path}: {err}");
    }
    let log = fs::read_to_string(s.sshd.dir.join("sshd.log")).unwrap_or_default();
    let _ = log;
}

/// Sends Hello + Get(path) + Flush through ssh by hand; returns what came back.
fn raw_get(s: &Setup, path: &str) -> String {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new("ssh")
        .args(["-T", "-o", "BatchMode=yes", "-o"])
        .arg(format!(
            "UserKnownHostsFile={}",
            s.sshd.dir.join("known_hosts").display()
        ))
        .arg("-i")
        .arg(&s.key_a)
        .args(["-p", &s.sshd.port.to_string(), "root@127.0.0.1", "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let frame = |json: String| {
        let mut v = (json.len() as u32).to_be_bytes().to_vec();
        v.extend(json.as_bytes());
        v.extend(0u32.to_be_bytes());
        v
    };
    let mut input =
        frame(r#"{"t":"Hello","version":2,"node":"a","max_file_size":1073741824}"#.into());
    input.extend(frame(format!(r#"{{"t":"Get","path":{path:?}}}"#)));
    input.extend(frame(r#"{"t":"Flush"}"#.into()));
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let _ = child.wait();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn publish_during_a_session_keeps_one_snapshot() {
    let s = setup();
    let served = s.f.dir.path().join("served");
    let src = s.f.server();
    let (code, _, err) = run(s
        .f
        .disco_without_server()
        .args(["publish"])
        .arg(&src)
        .arg("--root")
        .arg(&served));
    assert_eq!(code, 0, "{err}");
    let current = fs::read_link(served.join("current")).unwrap();
    assert!(current.starts_with("snapshots"));
    // Re-point the admin key at the published dir.
    let pub_admin = fs::read_to_string(s.key_admin.with_extension("pub")).unwrap();
    fs::write(
        s.sshd.dir.join("authorized_keys"),
        forced(pub_admin.trim(), &served, Some("a")) + "\n",
    )
    .unwrap();
    client(&s.f, &s.sshd, &s.key_admin);
    let uri = s.sshd.uri(served.to_str().unwrap());
    let (code, _, err) = plan_over(&s.f, &uri, "a");
    assert_eq!(code, 0, "{err}");
    let first = current.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&format!("snapshot {first}")), "{err}");
    // A session holding the snapshot: publish twice meanwhile with keep=1.
    let held = std::process::Command::new(env!("CARGO_BIN_EXE_disco"))
        .args(["serve", "--root"])
        .arg(&served)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    fs::write(src.join("parameters/a/parameters/secret"), "changed\n").unwrap();
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (code, _, err) = run(s
            .f
            .disco_without_server()
            .args(["publish", "--keep", "1"])
            .arg(&src)
            .arg("--root")
            .arg(&served));
        assert_eq!(code, 0, "{err}");
    }
    assert!(
        served.join("snapshots").join(&first).is_dir(),
        "the held snapshot survives pruning"
    );
    drop(held);
    let (code, _, err) = plan_over(&s.f, &uri, "a");
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(s
        .f
        .disco_without_server()
        .args(["--node", "a", "param", "get", "secret"]));
    assert_eq!(out, "changed\n");
}

#[test]
fn unreachable_server_and_wrong_host_key_are_clear_errors() {
    let s = setup();
    assert_eq!(
        plan_over(&s.f, &s.sshd.uri(s.f.server().to_str().unwrap()), "a").0,
        0
    );
    let before = snapshot(&s.f.cache());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let uri = format!("ssh://root@127.0.0.1:{closed}/srv");
    let (code, _, err) = plan_over(&s.f, &uri, "a");
    assert_eq!(code, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
    assert!(
        err.starts_with(&format!("error: cannot reach server {uri}: ")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A known_hosts with another key for this server.
    let other = s.f.dir.path().join("other_host");
    let other_pub = keygen(&other);
    fs::write(
        s.sshd.dir.join("known_hosts"),
        format!("[127.0.0.1]:{} {other_pub}\n", s.sshd.port),
    )
    .unwrap();
    let (code, _, err) = plan_over(&s.f, &s.sshd.uri(s.f.server().to_str().unwrap()), "a");
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach server") && err.contains("Host key verification failed"),
        "{err}"
    );
    assert_eq!(snapshot(&s.f.cache()), before, "the cache is untouched");
}

#[test]
fn ssh_killed_mid_transfer_leaves_the_old_cache() {
    let s = setup();
    let uri = s.sshd.uri(s.f.server().to_str().unwrap());
    assert_eq!(plan_over(&s.f, &uri, "a").0, 0);
    let before = snapshot(&s.f.cache());
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(s.f.server().join("modules/common/files/huge.bin"), &big).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_disco"));
    cmd.args(["--config"])
        .arg(s.f.config())
        .args(["--state-dir"])
        .arg(s.f.state());
    cmd.args(["--server", &uri, "--node", "a", "plan"])
        .stderr(std::process::Stdio::piped());
    let running = cmd.spawn().unwrap();
    // Kill the ssh client once the new cache is being built.
    let started = std::time::Instant::now();
    let building = || {
        fs::read_dir(s.f.state()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".cache.new-")
        })
    };
    while !building() && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let killed = std::process::Command::new("pkill")
        .args(["-f", "--", &format!("-p {} -l root", s.sshd.port)])
        .status()
        .unwrap();
    assert!(killed.success(), "ssh was running");
    let out = running.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(
        snapshot(&s.f.cache()),
        before,
        "previous cache byte-identical"
    );
    assert!(
        fs::read_dir(s.f.state()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".cache.new-")),
        "no partial new cache"
    );
}

/// Asks `disco serve` (run directly, no ssh) for a delta of `path` against
/// `signature`; returns the delta bytes.
fn delta_from_serve(server: &Path, path: &str, signature: &[u8]) -> Vec<u8> {
    use disco::transport::wire::{Msg, Wire, VERSION};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_disco"))
        .args(["serve", "--node", "a", "--root"])
        .arg(server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut wire = Wire::new(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    wire.say(
        &Msg::Hello {
            version: VERSION,
            node: "a".into(),
            max_file_size: 1 << 30,
            candidate: false,
        },
        &[],
    )
    .unwrap();
    assert!(matches!(wire.recv().unwrap().0, Msg::Welcome { .. }));
    wire.send(&Msg::Delta { path: path.into() }, signature)
        .unwrap();
    wire.say(&Msg::Flush, &[]).unwrap();
    let (head, _) = wire.recv().unwrap();
    let Msg::DeltaData { size, .. } = head else {
        panic!("expected a delta, got {head:?}")
    };
    let mut delta = Vec::new();
    while (delta.len() as u64) < size {
        delta.extend(wire.recv().unwrap().1);
    }
    wire.say(&Msg::Bye, &[]).unwrap();
    drop(wire);
    let _ = child.wait();
    delta
}

#[test]
fn rdiff_reads_disco_deltas_and_disco_reads_rdiff_signatures() {
    let f = Fixture::new();
    f.node("a", &["m"]).module("m", "");
    let old: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut new = old.clone();
    new[150_000..150_010].copy_from_slice(b"0123456789");
    new.extend_from_slice(b"appended tail");
    fs::create_dir_all(f.server().join("modules/m/files")).unwrap();
    fs::write(f.server().join("modules/m/files/blob"), &new).unwrap();
    let work = f.dir.path();
    fs::write(work.join("old"), &old).unwrap();

    // disco's own signature → disco's delta → rdiff patch.
    let sig = fast_rsync::Signature::calculate(
        &old,
        disco::transport::ssh::signature_options(old.len() as u64),
    );
    let delta = delta_from_serve(&f.server(), "modules/m/files/blob", sig.serialized());
    assert!(
        delta.len() < 20_000,
        "a small change gives a small delta ({} bytes)",
        delta.len()
    );
    fs::write(work.join("delta1"), &delta).unwrap();
    let st = std::process::Command::new("rdiff")
        .arg("patch")
        .arg(work.join("old"))
        .arg(work.join("delta1"))
        .arg(work.join("out1"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(work.join("out1")).unwrap(), new);

    // rdiff's signature (MD4, the rsync rollsum) → disco's delta → rdiff patch.
    let st = std::process::Command::new("rdiff")
        .args(["signature", "-H", "md4", "-R", "rollsum", "-S", "8"])
        .arg(work.join("old"))
        .arg(work.join("sig"))
        .status()
        .unwrap();
    assert!(st.success());
    let delta = delta_from_serve(
        &f.server(),
        "modules/m/files/blob",
        &fs::read(work.join("sig")).unwrap(),
    );
    fs::write(work.join("delta2"), &delta).unwrap();
    let st = std::process::Command::new("rdiff")
        .arg("patch")
        .arg(work.join("old"))
        .arg(work.join("delta2"))
        .arg(work.join("out2"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(work.join("out2")).unwrap(), new);
}

#[test]
fn serve_keeps_hashes_of_an_unpublished_tree_and_sees_a_rewrite() {
    let s = setup();
    let uri = s.sshd.uri(s.f.server().to_str().unwrap());
    let conf = s.f.server().join("modules/common/files/etc/common.conf");
    // Older than the racy window, so its md5 is kept.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let set_back = || {
        fs::File::options()
            .write(true)
            .open(&conf)
            .unwrap()
            .set_modified(old)
            .unwrap()
    };
    set_back();
    // Whole seconds past the racy window (2 s) since its ctime.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert_eq!(plan_over(&s.f, &uri, "a").0, 0);
    let caches: Vec<_> = fs::read_dir(s.sshd.dir.join("cache/disco"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    let saved = fs::read_to_string(&caches[0]).unwrap();
    assert!(
        saved.contains("2cd6ee2c70b0bde53fbe6cac3c8b8bb1"),
        "the md5 of common.conf is kept: {saved}"
    );
    // Same size, mtime set back: only the ctime tells — the server must
    // hash it again, and the node gets the new bytes.
    fs::write(&conf, "C\n").unwrap();
    set_back();
    let (code, _, err) = plan_over(&s.f, &uri, "a");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read_to_string(s.f.cache().join("modules/common/files/etc/common.conf")).unwrap(),
        "C\n"
    );
}
