//! `disco serve`'s memory is bounded per session and per node key: the
//! real `disco serve`, under an outer memory limit of the test's own that
//! must never trigger, attacked on its stdin the way a node key could
//! (Gets with huge paths, a List of 16 MiB of empty paths, duplicate
//! paths, an unbounded queue), and M+1 sessions of one key over a real
//! sshd on 127.0.0.1, the last refused with a line the node prints.
mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::outer::Outer;
use common::sshd::{forced, keygen, Sshd};
use common::{run, Fixture};

/// What one session of `disco serve` may hold, as docs/fleet.md states it.
const SESSION_BOUND: u64 = 160 << 20;
/// The outer limit: a serve that ignored its bound would meet it.
const OUTER: u64 = 1 << 30;
/// `MAX_SESSIONS` of `client/transport/serve.rs`, as docs/fleet.md states it.
const M: usize = 4;

fn frame(json: &[u8], blob: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + json.len() + blob.len());
    f.extend_from_slice(&(json.len() as u32).to_be_bytes());
    f.extend_from_slice(json);
    f.extend_from_slice(&(blob.len() as u32).to_be_bytes());
    f.extend_from_slice(blob);
    f
}

fn msg(v: serde_json::Value) -> Vec<u8> {
    frame(&serde_json::to_vec(&v).unwrap(), &[])
}

/// Reads one frame's JSON; None at the end of the stream.
fn read_frame(r: &mut impl Read) -> Option<serde_json::Value> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut json).ok()?;
    r.read_exact(&mut len).ok()?;
    let mut blob = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut blob).ok()?;
    Some(serde_json::from_slice(&json).unwrap())
}

/// A served tree for node `n` with one module.
fn fixture() -> Fixture {
    let f = Fixture::new();
    f.node("n", &["m"]).module("m", "");
    f.file("modules/m/files/etc/m.conf", "the content\n");
    f
}

/// `disco serve --root SERVER --node n` in `outer`, its pipes ours.
fn serve(f: &Fixture, outer: &Outer) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_disco"));
    c.arg("serve")
        .arg("--root")
        .arg(f.server())
        .args(["--node", "n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    outer.wrap(&mut c);
    c.spawn().unwrap()
}

/// Ends `child` (killed past the bounded limit) and returns its exit
/// code, stderr and peak RSS in bytes (wait4's ru_maxrss).
fn finish(mut child: Child) -> (i32, String, u64) {
    drop(child.stdin.take());
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = child.id() as i32;
    let started = Instant::now();
    let (status, rss) = loop {
        let mut status = 0;
        // SAFETY: an rusage we own, for a child of ours.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break (status, ru.ru_maxrss as u64 * 1024);
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if started.elapsed() > common::BOUNDED_LIMIT {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let code = std::process::ExitStatus::from_raw(status)
        .code()
        .unwrap_or(-1);
    (code, reader.join().unwrap(), rss)
}

/// Runs one attack: the hello, then frame `i` of `frames(i)` for `i` in
/// `0..n` (made and written from a thread after serve started, as the
/// server may stop reading; made before, they would count in serve's
/// peak RSS, which includes the forked test); returns the server's answer
/// (its last frame), its exit code, stderr and peak RSS.
fn attack(
    n: usize,
    frames: impl Fn(usize) -> Vec<u8> + Send + 'static,
) -> (serde_json::Value, i32, String, u64) {
    let f = fixture();
    let outer = Outer::new(64, OUTER);
    let mut child = serve(&f, &outer);
    let mut out = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&msg(
            serde_json::json!({"t": "Hello", "version": 2, "node": "n", "max_file_size": 1u64 << 30}),
        ))
        .unwrap();
    let welcome = read_frame(&mut out).expect("a welcome");
    assert_eq!(welcome["t"], "Welcome", "{welcome}");
    let writer = std::thread::spawn(move || {
        for i in 0..n {
            if stdin.write_all(&frames(i)).is_err() {
                break;
            }
        }
    });
    let mut last = serde_json::Value::Null;
    while let Some(v) = read_frame(&mut out) {
        last = v;
    }
    writer.join().unwrap();
    let (code, err, rss) = finish(child);
    assert_eq!(outer.hits(), (0, 0), "the outer limit was never met");
    assert!(
        rss < SESSION_BOUND,
        "serve's peak RSS {} MiB is over the stated bound",
        rss >> 20
    );
    eprintln!("peak RSS {} MiB", rss >> 20);
    (last, code, err, rss)
}

fn refused(last: &serde_json::Value, code: i32, err: &str, why: &str) {
    assert_eq!(last["t"], "Error", "{last}");
    let said = last["message"].as_str().unwrap();
    assert!(said.starts_with("server refused: "), "{said}");
    assert!(said.contains(why), "{said}");
    assert_eq!(code, 1, "{err}");
    let line = format!("disco serve: node n: refused: {}", &said[16..]);
    assert!(err.contains(&line), "the server logs {line:?}: {err}");
}

#[test]
fn gets_with_one_mib_paths_are_refused_at_their_frame() {
    let path = "a".repeat(1 << 20);
    let (last, code, err, _) = attack(1600, move |_| {
        msg(serde_json::json!({"t": "Get", "path": path}))
    });
    refused(
        &last,
        code,
        &err,
        "byte message is over the 1048576-byte limit",
    );
}

#[test]
fn gets_with_long_paths_are_refused() {
    let path = "a".repeat(5000);
    let (last, code, err, _) = attack(1, move |_| {
        msg(serde_json::json!({"t": "Get", "path": path}))
    });
    refused(&last, code, &err, "a request names a path over 4096 bytes");
}

#[test]
fn queued_gets_count_their_whole_frames() {
    // 4000-byte paths, never flushed: 16,000 frames are 64 MB; the queue
    // stops at 32 MiB counted by frame size.
    let path = "a".repeat(4000);
    let (last, code, err, _) = attack(16_000, move |_| {
        msg(serde_json::json!({"t": "Delta", "path": path}))
    });
    refused(
        &last,
        code,
        &err,
        "over 32.0 MiB of requests queued without a Flush",
    );
}

#[test]
fn a_16_mib_list_of_empty_paths_is_refused() {
    let (last, code, err, _) = attack(1, |_| {
        let mut json = br#"{"t":"List","paths":["#.to_vec();
        while json.len() < (16 << 20) - 16 {
            json.extend_from_slice(br#""","#);
        }
        json.extend_from_slice(br#""""]}"#);
        frame(&json, &[])
    });
    refused(&last, code, &err, "over the 1048576-byte limit");
}

#[test]
fn a_list_of_too_many_or_duplicate_paths_is_refused() {
    let (last, code, err, _) = attack(1, |_| {
        msg(serde_json::json!({"t": "List", "paths": vec![""; 300_000]}))
    });
    refused(
        &last,
        code,
        &err,
        "a List of 300000 paths is over the 1024-path limit",
    );

    let (last, code, err, _) = attack(1, |_| {
        msg(serde_json::json!({"t": "List", "paths": ["", "modules", ""]}))
    });
    refused(&last, code, &err, r#"a List names "" twice"#);
}

/// Waits until `n` of node n's session slots are held by serves.
fn wait_for_slots(server: &Path, n: usize) {
    let started = Instant::now();
    loop {
        let mut held = 0;
        for k in 0..M {
            let Ok(f) = fs::File::open(server.join(format!("sessions/n/slot-{k}"))) else {
                continue;
            };
            // SAFETY: flock on a descriptor we own, released at once.
            let r = unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    libc::LOCK_SH | libc::LOCK_NB,
                )
            };
            if r != 0 {
                held += 1;
            }
        }
        if held == n {
            return;
        }
        assert!(
            started.elapsed() < common::BOUNDED_LIMIT,
            "{n} sessions never started ({held})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_key_holds_at_most_m_sessions() {
    let f = fixture();
    let keys = f.dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let key = keys.join("n");
    let public = keygen(&key);
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[forced(&public, &f.server(), Some("n"))],
    );
    fs::write(f.config(), sshd.client_config(&key)).unwrap();
    let uri = sshd.uri(&f.server().display().to_string());
    let plan = || {
        run(f
            .disco_without_server()
            .args(["--server", &uri, "--node", "n", "plan"]))
    };
    let (code, _, err) = plan();
    assert_eq!(code, 0, "{err}");

    // M sessions of the key that send nothing: each holds its slot.
    let outer = Outer::new(256, OUTER);
    let mut held: Vec<Child> = (0..M)
        .map(|_| {
            let mut c = Command::new("ssh");
            c.args([
                "-T",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                sshd.dir.join("known_hosts").display()
            ))
            .arg("-i")
            .arg(&key)
            .args(["-o", "IdentitiesOnly=yes", "-p"])
            .arg(sshd.port.to_string())
            .args(["root@127.0.0.1", "disco", "serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            outer.wrap(&mut c);
            c.spawn().unwrap()
        })
        .collect();
    wait_for_slots(&f.server(), M);

    // The M+1st: refused, and the node says why in one line.
    let (code, out, err) = plan();
    assert_eq!(code, 1, "{out}{err}");
    let line = format!("error: server {uri}: server refused: too many sessions of node n ({M})");
    assert!(err.lines().any(|l| l == line), "{line:?} in: {err}");

    // The server logs it (a serve run as the forced command would).
    let mut c = Command::new(env!("CARGO_BIN_EXE_disco"));
    c.arg("serve")
        .arg("--root")
        .arg(f.server())
        .args(["--node", "n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (code, logged, _) = finish(c.spawn().unwrap());
    assert_eq!(code, 1);
    assert!(
        logged.contains(&format!(
            "disco serve: node n: refused: too many sessions of node n ({M})"
        )),
        "{logged}"
    );

    // A session that ends (however: here killed) frees its slot.
    let mut first = held.remove(0);
    let _ = first.kill();
    let _ = first.wait();
    wait_for_slots(&f.server(), M - 1);
    let (code, _, err) = plan();
    assert_eq!(code, 0, "{err}");
    for mut c in held {
        drop(c.stdin.take());
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(outer.hits(), (0, 0));
}
