//! `disco serve`'s deadlines and what it never reads, against a private
//! sshd on 127.0.0.1 and the real binary on both sides: silent sessions
//! (and one that sent half a frame header) end at `--io-timeout` and free
//! their snapshot for `disco publish --keep 1`; a file over the node's
//! `max_file_size` is refused at the listing without being read; a
//! published snapshot is never hashed by serve.
mod common;

use common::sshd::{keygen, Sshd};
use common::{run, Fixture};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An authorized_keys line forcing `disco serve --root ROOT --node a EXTRA`.
fn forced_with(pubkey: &str, root: &Path, extra: &str) -> String {
    format!(
        "command=\"{} serve --root {} --node a {extra}\",restrict {pubkey}",
        env!("CARGO_BIN_EXE_disco"),
        root.display()
    )
}

/// Node `a` with modules `common` and `only-a` (a small tree).
fn tree() -> Fixture {
    let f = Fixture::new();
    f.node("a", &["common", "only-a"]);
    f.module("common", "").module("only-a", "");
    f.file("parameters/a/parameters/secret", "a-secret\n")
        .file("modules/common/files/etc/common.conf", "c\n")
        .file("modules/only-a/files/etc/a.conf", "a\n");
    f
}

fn publish(f: &Fixture, served: &Path, keep: &str) -> (i32, String, String) {
    run(f
        .disco_without_server()
        .args(["publish", "--keep", keep])
        .arg(f.server())
        .arg("--root")
        .arg(served))
}

fn plan_over(f: &Fixture, uri: &str) -> (i32, String, String) {
    run(f
        .disco_without_server()
        .args(["--server", uri, "--node", "a", "plan"]))
}

fn snapshots(served: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(served.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// PIDs of the `disco serve` processes serving `served`.
fn serving(served: &Path) -> Vec<u32> {
    let want = served.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter().any(|a| a == "serve") && args.contains(&want)
        })
        .collect()
}

/// ssh clients of the test: killed and reaped on drop, even on failure.
struct Clients(Vec<Child>);

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw ssh session with `key` (its forced command runs), stdin held open.
fn raw_ssh(sshd: &Sshd, key: &Path) -> Child {
    Command::new("ssh")
        .args(["-T", "-o", "BatchMode=yes", "-o"])
        .arg(format!(
            "UserKnownHostsFile={}",
            sshd.dir.join("known_hosts").display()
        ))
        .arg("-i")
        .arg(key)
        .args(["-p", &sshd.port.to_string(), "root@127.0.0.1", "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn silent_sessions_end_at_io_timeout_and_free_their_snapshot() {
    let f = tree();
    let served = f.dir.path().join("served");
    let (code, _, err) = publish(&f, &served, "1");
    assert_eq!(code, 0, "{err}");
    let first = snapshots(&served);
    assert_eq!(first.len(), 1);
    let keys = f.dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    // Six node keys: a key holds at most 4 sessions at once (serve's
    // session slots), so 21 silent sessions need six nodes' keys.
    const NODES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
    let lines: Vec<String> = NODES
        .iter()
        .map(|n| {
            let pubkey = keygen(&keys.join(n));
            forced_with(&pubkey, &served, "--io-timeout 5")
                .replace("--node a ", &format!("--node {n} "))
        })
        .collect();
    let sshd = Sshd::start(&f.dir.path().join("sshd"), &lines);
    let node_of = |i: usize| NODES[i % NODES.len()];
    // The next publish gets another snapshot id (ids are by the second).
    std::thread::sleep(Duration::from_millis(1100));
    f.file("parameters/a/parameters/secret", "changed\n");
    // 20 sessions that send nothing, one that sends half a frame header.
    let started = Instant::now();
    let mut clients = Clients(
        (0..21)
            .map(|i| raw_ssh(&sshd, &keys.join(node_of(i))))
            .collect(),
    );
    clients.0[20]
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&[0, 0])
        .unwrap();
    // Each session starts its disco serve (holding the first snapshot)...
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 21 && started.elapsed() < Duration::from_secs(60) {
        seen.extend(serving(&served));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen.len(), 21, "every session started its disco serve");
    // ... so a publish now keeps the held snapshot.
    let (code, _, err) = publish(&f, &served, "1");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("kept snapshot {}", first[0])),
        "{err}"
    );
    // They end on their own at the io_timeout (5 s); the margin is for a
    // loaded machine, the figure is printed.
    let left = loop {
        let left = serving(&served);
        if left.is_empty() || started.elapsed() > Duration::from_secs(60) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "21 silent sessions gone {:.1} s after the first started (io_timeout 5 s)",
        started.elapsed().as_secs_f64()
    );
    assert!(left.is_empty(), "serve processes still running: {left:?}");
    // The server said why, one line each (ssh relays serve's stderr).
    for (i, c) in clients.0.iter_mut().enumerate() {
        drop(c.stdin.take());
        let mut said = String::new();
        std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut said).unwrap();
        let _ = c.wait();
        // The account's shell startup may print its own lines first (a
        // root profile's noise); serve's is the one line that ends it.
        let want = format!(
            "disco serve: node {}: sent nothing for 5 s (io_timeout); session ended",
            node_of(i)
        );
        assert_eq!(
            said.lines().last(),
            Some(want.as_str()),
            "session {i}: {said}"
        );
        assert_eq!(
            said.lines()
                .filter(|l| l.starts_with("disco serve:"))
                .count(),
            1,
            "session {i}: {said}"
        );
    }
    // Nothing holds the first snapshot any more: --keep 1 prunes it.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, _, err) = publish(&f, &served, "1");
    assert_eq!(code, 0, "{err}");
    let now = snapshots(&served);
    assert_eq!(now.len(), 1, "{now:?}: {err}");
    assert!(!now.contains(&first[0]), "{now:?}");
    // A node fetches the new snapshot.
    client(&f, &sshd, &keys.join("a"), "");
    let (code, out, err) = plan_over(&f, &sshd.uri(served.to_str().unwrap()));
    assert_eq!((code, out.as_str()), (0, "common\nonly-a\n"), "{err}");
    assert!(err.contains(&format!("snapshot {}", now[0])), "{err}");
}

/// A fixture whose config uses `key` with sshd and `extra` settings.
fn client(f: &Fixture, sshd: &Sshd, key: &Path, extra: &str) {
    fs::write(f.config(), sshd.client_config(key) + extra).unwrap();
}

#[test]
fn a_sparse_file_over_max_file_size_is_refused_at_the_listing_unread() {
    let f = tree();
    // 8 files of 15 GiB of holes (each under the protocol's 16 GiB cap):
    // hashing them would take minutes.
    let files = f.server().join("modules/common/files");
    for i in 0..8 {
        let st = Command::new("truncate")
            .args(["-s", "15G"])
            .arg(files.join(format!("huge-{i}.img")))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let key = f.dir.path().join("key");
    let pubkey = keygen(&key);
    // Served as it is (unpublished, so hashed by serve), within 30 s: had
    // serve read the file, the session would end before any listing.
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[forced_with(&pubkey, &f.server(), "--fetch-timeout 30")],
    );
    client(&f, &sshd, &key, "max_file_size = 1048576\n");
    let uri = sshd.uri(f.server().to_str().unwrap());
    let started = Instant::now();
    let (code, _, err) = plan_over(&f, &uri);
    println!(
        "refused in {:.2} s (120 GiB of files over max_file_size, none read)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "modules/common/files/huge-0.img is 15.0 GiB, over max_file_size (1.0 MiB); refused"
        ),
        "{err}"
    );
    // Nothing of the file went into serve's hash cache (never hashed).
    let cache = sshd.dir.join("cache/disco");
    for e in fs::read_dir(&cache).into_iter().flatten().flatten() {
        let text = fs::read_to_string(e.path()).unwrap();
        assert!(!text.contains(&(15u64 << 30).to_string()), "{text}");
    }
    // With the files gone the same node fetches.
    for i in 0..8 {
        fs::remove_file(files.join(format!("huge-{i}.img"))).unwrap();
    }
    let (code, out, err) = plan_over(&f, &uri);
    assert_eq!((code, out.as_str()), (0, "common\nonly-a\n"), "{err}");
}

#[test]
fn serve_never_hashes_a_published_snapshot() {
    let f = tree();
    f.node("a", &["common", "only-a", "alias"]);
    // A unit that is a symlink to another one.
    std::os::unix::fs::symlink("common", f.server().join("modules/alias")).unwrap();
    let served = f.dir.path().join("served");
    let (code, _, err) = publish(&f, &served, "2");
    assert_eq!(code, 0, "{err}");
    let key = f.dir.path().join("key");
    let pubkey = keygen(&key);
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[forced_with(&pubkey, &served, "")],
    );
    client(&f, &sshd, &key, "");
    let uri = sshd.uri(served.to_str().unwrap());
    let (code, out, err) = plan_over(&f, &uri);
    assert_eq!(
        (code, out.as_str()),
        (0, "alias\ncommon\nonly-a\n"),
        "{err}"
    );
    // The snapshot's file made a FIFO: a serve that walked the snapshot
    // (its plain units or the linked one) would refuse it.
    let current: PathBuf = fs::canonicalize(served.join("current")).unwrap();
    let conf = current.join("modules/common/files/etc/common.conf");
    fs::remove_file(&conf).unwrap();
    let st = Command::new("mkfifo").arg(&conf).status().unwrap();
    assert!(st.success());
    let (code, out, err) = plan_over(&f, &uri);
    assert_eq!(
        (code, out.as_str()),
        (0, "alias\ncommon\nonly-a\n"),
        "{err}"
    );
    assert!(err.contains("unchanged"), "{err}");
    let saved: Vec<_> = fs::read_dir(sshd.dir.join("cache/disco"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(saved.is_empty(), "nothing hashed, no hash cache: {saved:?}");
}

/// `disco serve --node a --root ROOT` run directly (no ssh) on pipes.
fn direct_serve(root: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_disco"))
        .args(["serve", "--node", "a", "--io-timeout", "10", "--root"])
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Bytes a process has read (`rchar` of /proc/PID/io).
fn read_bytes(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn serve_reads_nothing_of_a_file_over_the_hellos_max_file_size() {
    use disco::transport::wire::{Msg, Wire, VERSION};
    let f = tree();
    let huge = f.server().join("modules/common/files/huge.img");
    let st = Command::new("truncate")
        .args(["-s", "15G"])
        .arg(&huge)
        .status()
        .unwrap();
    assert!(st.success());
    let mut serve = direct_serve(&f.server());
    let pid = serve.id();
    let mut wire = Wire::new(serve.stdout.take().unwrap(), serve.stdin.take().unwrap());
    wire.say(
        &Msg::Hello {
            version: VERSION,
            node: "a".into(),
            max_file_size: 1 << 20,
            candidate: false,
        },
        &[],
    )
    .unwrap();
    let (welcome, _) = wire.recv().unwrap();
    assert!(matches!(welcome, Msg::Welcome { .. }), "{welcome:?}");
    // The view is made (every file hashed but the big one): serve read
    // the tree's small files only.
    let read = read_bytes(pid);
    println!("disco serve read {read} bytes for a view holding a 15 GiB file");
    assert!(read < 64 << 20, "serve read {read} bytes");
    wire.say(
        &Msg::List {
            paths: vec!["modules/common/files".into()],
        },
        &[],
    )
    .unwrap();
    let (Msg::Listings { dirs }, _) = wire.recv().unwrap() else {
        panic!("no listing")
    };
    let e = dirs[0]
        .entries
        .iter()
        .find(|e| e.name == "huge.img")
        .unwrap();
    assert_eq!(
        e.size,
        15 << 30,
        "listed with its size, for the node to refuse"
    );
    wire.say(&Msg::Bye, &[]).unwrap();
    drop(wire);
    assert!(serve.wait().unwrap().success());
}

#[test]
fn a_version_1_hello_is_refused_naming_both_versions() {
    use disco::transport::wire::{Wire, VERSION};
    let f = tree();
    let mut serve = direct_serve(&f.server());
    let mut input = serve.stdin.take().unwrap();
    // What a disco of protocol version 1 sends: no max_file_size.
    let json = br#"{"t":"Hello","version":1,"node":"a"}"#;
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend(json);
    frame.extend(0u32.to_be_bytes());
    input.write_all(&frame).unwrap();
    let mut wire = Wire::new(serve.stdout.take().unwrap(), input);
    let err = wire.recv().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("protocol version mismatch: the client speaks 1, this server {VERSION}; install the same disco on both")
    );
    drop(wire);
    assert_eq!(serve.wait().unwrap().code(), Some(1));
}

#[test]
fn a_session_past_fetch_timeout_ends_with_one_line() {
    let f = tree();
    // A node that keeps the session open, sending nothing, under an
    // io_timeout longer than the session's whole deadline.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_disco"))
        .args(["serve", "--node", "a", "--io-timeout", "600"])
        .args(["--fetch-timeout", "2", "--root"])
        .arg(f.server())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _input = serve.stdin.take();
    let mut said = String::new();
    std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut said).unwrap();
    let status = serve.wait().unwrap();
    assert_eq!(
        said,
        "disco serve: node a: did not finish within 2 s (fetch_timeout); session ended\n"
    );
    assert_eq!(status.code(), Some(1));
}

#[test]
fn hashing_an_unpublished_tree_stops_at_fetch_timeout() {
    use disco::transport::wire::{Msg, Wire, VERSION};
    let f = tree();
    // 15 GiB of holes the node accepts: serve must hash it, which takes
    // far longer than the session's 1 s.
    let st = Command::new("truncate")
        .args(["-s", "15G"])
        .arg(f.server().join("modules/common/files/big.img"))
        .status()
        .unwrap();
    assert!(st.success());
    let mut serve = Command::new(env!("CARGO_BIN_EXE_disco"))
        .args(["serve", "--node", "a", "--fetch-timeout", "1", "--root"])
        .arg(f.server())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut wire = Wire::new(serve.stdout.take().unwrap(), serve.stdin.take().unwrap());
    wire.say(
        &Msg::Hello {
            version: VERSION,
            node: "a".into(),
            max_file_size: 16 << 30,
            candidate: false,
        },
        &[],
    )
    .unwrap();
    let started = Instant::now();
    let err = wire.recv().unwrap_err();
    println!(
        "the session ended {:.1} s into hashing 15 GiB (fetch_timeout 1 s)",
        started.elapsed().as_secs_f64()
    );
    assert!(err.to_string().contains("connection closed"), "{err}");
    let mut said = String::new();
    std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert_eq!(
        said,
        "disco serve: node a: did not finish within 1 s (fetch_timeout); session ended\n"
    );
    assert_eq!(serve.wait().unwrap().code(), Some(1));
}
