//! Benchmark: fetching over SSH against a private sshd, disco vs rsync, on
//! 50 modules × (20 small text files of 0.5–4 KiB + 2 × 1 MiB) plus 10 nodes
//! × 100 parameters (about 2,100 files, 107 MB). Cases: initial, no change,
//! and "1 byte changed in a 1 MiB file + one line appended to a small
//! file". Bytes are counted at the socket by a relay this binary runs as
//! ssh's ProxyCommand. Prints median wall time and bytes on the wire.
//!
//! Run as root: `cargo bench --bench fetch` (needs openssh-server, rsync).

#[path = "../tests/common/sshd.rs"]
mod sshd;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 5;

/// `fetch relay PORT COUNTS`: copies stdin/stdout to 127.0.0.1:PORT and
/// appends "up down" byte counts to COUNTS when the connection ends.
fn relay(port: u16, counts: &Path) {
    // ssh ends its ProxyCommand with a signal; finish counting anyway.
    // SAFETY: setting signal dispositions at the start of a single-threaded process.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut to_server = sock.try_clone().unwrap();
    let mut from_server = sock;
    let up = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = [0u8; 65536];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if to_server.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    n += k as u64;
                }
            }
        }
        let _ = to_server.shutdown(std::net::Shutdown::Write);
        n
    });
    let mut down = 0u64;
    let mut buf = [0u8; 65536];
    let mut stdout = std::io::stdout();
    loop {
        match from_server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                if stdout
                    .write_all(&buf[..k])
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    break;
                }
                down += k as u64;
            }
        }
    }
    let up = up.join().unwrap_or(0);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(counts)
        .unwrap();
    writeln!(f, "{up} {down}").unwrap();
}

fn write(p: &Path, content: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn tree(root: &Path) {
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for m in 0..50 {
        let dir = root.join(format!("modules/m{m:02}"));
        write(&dir.join("requires"), b"");
        for f in 0..20 {
            let len = 512 + (rand() % 3584) as usize;
            let text: String = (0..len)
                .map(|i| {
                    if i % 64 == 63 {
                        '\n'
                    } else {
                        (b'a' + (rand() % 26) as u8) as char
                    }
                })
                .collect();
            write(
                &dir.join(format!("files/etc/m{m:02}/f{f:02}.conf")),
                text.as_bytes(),
            );
        }
        for b in 0..2 {
            let data: Vec<u8> = (0..1 << 20).map(|_| rand() as u8).collect();
            write(&dir.join(format!("files/opt/m{m:02}/blob{b}.bin")), &data);
        }
    }
    for n in 0..10 {
        let dir = root.join(format!("parameters/n{n}"));
        for m in 0..50 {
            write(&dir.join(format!("modules/m{m:02}")), b"");
        }
        for p in 0..100 {
            write(
                &dir.join(format!("parameters/k{p:03}")),
                format!("value {n} {p}\n").as_bytes(),
            );
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Case {
    wall: Vec<f64>,
    bytes: Vec<u64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("relay") {
        relay(args[2].parse().unwrap(), Path::new(&args[3]));
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the fetch benchmark needs root (it runs its own sshd)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    tree(&src);
    // Nodes fetch a published snapshot (its manifest is computed once, at publish).
    let served = d.join("served");
    let publish = || {
        let st = Command::new(env!("CARGO_BIN_EXE_disco"))
            .arg("publish")
            .arg(&src)
            .arg("--root")
            .arg(&served)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    publish();
    let server = served.clone();
    let key = d.join("key");
    let plain = d.join("plain");
    let pk = sshd::keygen(&key);
    let pp = sshd::keygen(&plain);
    // A second node key, served the source tree itself (not published):
    // the server hashes it, with its hash cache.
    let key_src = d.join("key-src");
    let pks = sshd::keygen(&key_src);
    let sshd = sshd::Sshd::start(
        &d.join("sshd"),
        &[
            sshd::forced(&pk, &server, Some("n0")),
            sshd::forced(&pks, &src, Some("n0")),
            pp,
        ],
    );
    let counts = d.join("counts");
    let exe = std::env::current_exe().unwrap();
    let proxy = format!(
        "ProxyCommand={} relay {} {}",
        exe.display(),
        sshd.port,
        counts.display()
    );
    let known = sshd.dir.join("known_hosts");
    let take_bytes = || -> u64 {
        let text = fs::read_to_string(&counts).unwrap_or_default();
        let _ = fs::remove_file(&counts);
        text.split_whitespace()
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    };
    let config = d.join("disco.toml");
    fs::write(
        &config,
        format!(
            "ssh_identity = \"{}\"\nssh_known_hosts = \"{}\"\nssh_options = [{:?}]\n",
            key.display(),
            known.display(),
            proxy
        ),
    )
    .unwrap();
    let ssh_e = format!(
        "ssh -o BatchMode=yes -o UserKnownHostsFile={} -i {} -o IdentitiesOnly=yes -p {} -o '{}'",
        known.display(),
        plain.display(),
        sshd.port,
        proxy
    );
    let uri = sshd.uri(server.to_str().unwrap());

    let time = |mut c: Command| -> f64 {
        let t = Instant::now();
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{:?}: {}",
            c,
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed().as_secs_f64()
    };
    // `disco plan` (a fetch) with a config and a server URI.
    let plan = |config: &Path, uri: &str, state: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_disco"));
        c.arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .args(["--server", uri, "--node", "n0", "plan"]);
        c
    };
    let disco = |state: &Path| plan(&config, &uri, state);
    let rsync = |dest: &Path, checksum: bool| {
        let mut c = Command::new("rsync");
        c.arg("-a").arg("--delete");
        if checksum {
            c.arg("--checksum");
        }
        c.arg("-e")
            .arg(&ssh_e)
            .arg(format!("root@127.0.0.1:{}/current/", server.display()))
            .arg(dest);
        c
    };
    let handshake = || {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("{ssh_e} root@127.0.0.1 true"));
        c
    };

    let mut rows: Vec<(String, Case)> = Vec::new();
    let mut measure = |name: &str, f: &mut dyn FnMut() -> f64| {
        let mut case = Case {
            wall: Vec::new(),
            bytes: Vec::new(),
        };
        for _ in 0..RUNS {
            let _ = take_bytes();
            case.wall.push(f());
            case.bytes.push(take_bytes());
        }
        rows.push((name.to_string(), case));
    };

    measure("ssh handshake alone (ssh true)", &mut || time(handshake()));
    // Initial: fresh state each time.
    measure("disco fetch, initial", &mut || {
        let st = d.join("st-init");
        let _ = fs::remove_dir_all(&st);
        time(disco(&st))
    });
    measure("rsync -a, initial", &mut || {
        let dst = d.join("rs-init");
        let _ = fs::remove_dir_all(&dst);
        time(rsync(&dst, false))
    });
    let st = d.join("st");
    let rs = d.join("rs");
    let _ = time(disco(&st));
    let _ = time(rsync(&rs, false));
    measure("disco fetch, no change", &mut || time(disco(&st)));
    measure("rsync -a, no change", &mut || time(rsync(&rs, false)));
    measure("rsync -a --checksum, no change", &mut || {
        time(rsync(&rs, true))
    });
    let config_src = d.join("disco-src.toml");
    fs::write(
        &config_src,
        fs::read_to_string(&config)
            .unwrap()
            .replace(key.to_str().unwrap(), key_src.to_str().unwrap()),
    )
    .unwrap();
    let uri_src = sshd.uri(src.to_str().unwrap());
    let from_src = |state: &Path| plan(&config_src, &uri_src, state);
    let st_src = d.join("st-src");
    let _ = time(from_src(&st_src));
    measure("disco fetch, no change, tree not published", &mut || {
        time(from_src(&st_src))
    });

    // Small change: flip a byte in a 1 MiB file, append a line to a small one.
    let blob = src.join("modules/m07/files/opt/m07/blob0.bin");
    let small = src.join("modules/m07/files/etc/m07/f03.conf");
    let mut flip = 0u8;
    let mut change = || {
        let mut b = fs::read(&blob).unwrap();
        b[524_288] ^= 0xff;
        fs::write(&blob, b).unwrap();
        flip = flip.wrapping_add(1);
        let mut f = fs::OpenOptions::new().append(true).open(&small).unwrap();
        writeln!(f, "appended line {flip}").unwrap();
        publish();
    };
    let mut disco_small = Vec::new();
    let mut rsync_small = Vec::new();
    let mut rsync_small_c = Vec::new();
    for _ in 0..RUNS {
        change();
        let _ = take_bytes();
        let w = time(disco(&st));
        disco_small.push((w, take_bytes()));
        let w = time(rsync(&rs, false));
        rsync_small.push((w, take_bytes()));
        change();
        let _ = time(disco(&st));
        let _ = take_bytes();
        let w = time(rsync(&rs, true));
        rsync_small_c.push((w, take_bytes()));
    }
    for (name, v) in [
        (
            "disco fetch, 1 byte in 1 MiB + 1 line appended",
            disco_small,
        ),
        ("rsync -a, same change", rsync_small),
        ("rsync -a --checksum, same change", rsync_small_c),
    ] {
        rows.push((
            name.into(),
            Case {
                wall: v.iter().map(|x| x.0).collect(),
                bytes: v.iter().map(|x| x.1).collect(),
            },
        ));
    }

    println!(
        "{:<50} {:>10} {:>14}",
        "fetch over ssh (2,100 files, 107 MB)", "median", "bytes on wire"
    );
    for (name, c) in rows {
        let mut b = c.bytes.clone();
        b.sort();
        println!(
            "{name:<50} {:>8.0}ms {:>14}",
            median(c.wall) * 1e3,
            b[b.len() / 2]
        );
    }
    let _: PathBuf = d.to_path_buf();
}
