//! `disco init` end to end: a new node's files written under `--root`, the
//! server's host key pinned against a real sshd on 127.0.0.1, the printed
//! authorized_keys line installed on that server, and the node then
//! fetching its plan over SSH with nothing but what init wrote.
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::sshd::Sshd;
use common::{assert_error, run, Fixture};

/// `disco init` for a node whose root is `root`, no config of the test's.
fn init(root: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = assert_cmd::Command::cargo_bin("disco").unwrap();
    c.env_remove("NOOP")
        .env("NO_COLOR", "1")
        .arg("init")
        .arg("--root")
        .arg(root)
        .args(args);
    run(&mut c)
}

fn host_fingerprint(sshd: &Sshd) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(sshd.dir.join("host_key.pub"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn init_pins_the_host_key_and_the_printed_line_lets_the_node_fetch() {
    let f = Fixture::new();
    f.node("web1", &["app"]).module("app", "");
    f.file("modules/app/files/etc/app.conf", "x\n");
    let sshd = Sshd::start(&f.dir.path().join("sshd"), &[]);
    let root = f.dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), "web1\n").unwrap();
    let uri = sshd.uri(&f.server().display().to_string());
    let print = host_fingerprint(&sshd);

    // No terminal and no --host-key: nothing is pinned, the fingerprint is said.
    assert_error(
        init(&root, &["--server", &uri]),
        &format!("error: the host key of 127.0.0.1 is {print}; confirm it with --host-key {print} (no terminal to ask on)"),
    );
    assert!(!root.join("etc/disco/known_hosts").exists());
    assert!(!root.join("etc/disco/disco.toml").exists());
    // A wrong fingerprint is refused.
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_error(
        init(&root, &["--server", &uri, "--host-key", wrong]),
        &format!("error: the host key of 127.0.0.1 is {print}, not {wrong}: not pinned (is this the right server?)"),
    );
    assert!(!root.join("etc/disco/known_hosts").exists());

    let (code, out, err) = init(&root, &["--server", &uri, "--host-key", &print]);
    assert_eq!(code, 0, "{err}");
    let etc = root.join("etc/disco");
    let public = fs::read_to_string(etc.join("id_ed25519.pub")).unwrap();
    assert!(public.starts_with("ssh-ed25519 ") && public.trim().ends_with(" disco@web1"));
    assert_eq!(
        fs::metadata(etc.join("id_ed25519")).unwrap().mode() & 0o777,
        0o600
    );
    let line = format!(
        "command=\"disco serve --root {} --node web1\",restrict {}",
        f.server().display(),
        public.trim()
    );
    assert!(out.contains(&format!("\n{line}\n")), "{out}");
    let host_pub = fs::read_to_string(sshd.dir.join("host_key.pub")).unwrap();
    let host_key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    assert_eq!(
        fs::read_to_string(etc.join("known_hosts")).unwrap(),
        format!("[127.0.0.1]:{} {}\n", sshd.port, host_key.join(" "))
    );
    let config = fs::read_to_string(etc.join("disco.toml")).unwrap();
    assert!(
        config.contains(&format!("server = \"{uri}\"\n")),
        "{config}"
    );
    assert!(config.contains("node = \"web1\"\n"));
    assert!(config.contains("ssh_identity = \"/etc/disco/id_ed25519\"\n"));
    assert!(config.contains("ssh_known_hosts = \"/etc/disco/known_hosts\"\n"));

    // The server admin installs the printed line (disco is not on this
    // sshd's PATH: the test's binary stands in for it).
    let installed = line.replacen(
        "disco serve",
        &format!("{} serve", env!("CARGO_BIN_EXE_disco")),
        1,
    );
    fs::write(sshd.dir.join("authorized_keys"), format!("{installed}\n")).unwrap();
    // The node, whose /etc is `root/etc` here: a drop-in points the
    // written paths at it, as they are on the node itself.
    fs::create_dir_all(etc.join("disco.d")).unwrap();
    fs::write(
        etc.join("disco.d/test.toml"),
        format!(
            "ssh_identity = \"{}\"\nssh_known_hosts = \"{}\"\n",
            etc.join("id_ed25519").display(),
            etc.join("known_hosts").display()
        ),
    )
    .unwrap();
    let mut plan = assert_cmd::Command::cargo_bin("disco").unwrap();
    plan.env_remove("NOOP")
        .env_remove("DISCO_SERVER")
        .env_remove("DISCO_NODE")
        .arg("--config")
        .arg(etc.join("disco.toml"))
        .arg("--state-dir")
        .arg(f.state())
        .arg("plan");
    let (code, out, err) = run(&mut plan);
    assert_eq!((code, out.as_str()), (0, "app\n"), "{err}");

    // A second init keeps the key, refuses to overwrite the settings…
    assert_error(
        init(&root, &["--server", &uri, "--host-key", &print]),
        &format!(
            "error: {} already has settings; edit it, or give --force to replace it",
            etc.join("disco.toml").display()
        ),
    );
    // …and with --force, pinning the key as given (no scan), keeps the
    // node's key and the other lines of known_hosts.
    fs::write(
        etc.join("known_hosts"),
        format!("other ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n{}", fs::read_to_string(etc.join("known_hosts")).unwrap()),
    )
    .unwrap();
    let (code, _, err) = init(
        &root,
        &[
            "--server",
            &uri,
            "--host-key",
            &host_pub,
            "--force",
            "--node",
            "web1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read_to_string(etc.join("id_ed25519.pub")).unwrap(),
        public
    );
    let known = fs::read_to_string(etc.join("known_hosts")).unwrap();
    assert_eq!(known.lines().count(), 2, "{known}");
    assert!(known.starts_with("other "));

    // --new-key replaces the key (rotation) and prints the new lines:
    // authorized_keys and the node.pub its secrets are encrypted to.
    let (code, out, err) = init(
        &root,
        &[
            "--server",
            &uri,
            "--host-key",
            &host_pub,
            "--force",
            "--new-key",
            "--node",
            "web1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let new = fs::read_to_string(etc.join("id_ed25519.pub")).unwrap();
    assert_ne!(new, public);
    assert!(out.contains(&format!("restrict {}", new.trim())), "{out}");
    assert!(
        out.contains(&format!(
            "as parameters/web1/node.pub (its secrets are encrypted to it), then `disco secret rekey` there:\n\n{}\n",
            new.trim()
        )),
        "{out}"
    );
}

#[test]
fn init_refuses_bad_input_in_one_line_and_writes_nothing() {
    let f = Fixture::new();
    let root = f.dir.path().join("root");
    fs::create_dir_all(&root).unwrap();
    assert_error(
        init(&root, &["--server", "ftp://x/y", "--node", "n"]),
        "error: server 'ftp://x/y': unknown scheme ftp://; use a directory path or ssh://[user@]host[:port]/path",
    );
    assert_error(
        init(&root, &["--server", "ssh://h/srv", "--node", "a/b"]),
        "error: bad name 'a/b' at --node: names must match [A-Za-z0-9._-]+ and not be '.' or '..'",
    );
    assert_error(
        init(
            &root,
            &["--server", "ssh://h/srv", "--node", "n", "--host-key", "nonsense"],
        ),
        "error: --host-key 'nonsense' is neither `TYPE BASE64` (ssh-ed25519 AAAA…) nor a SHA256: fingerprint",
    );
    // Keys ssh could not use are refused before anything is written.
    let blob = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    assert_error(
        init(
            &root,
            &["--server", "ssh://h/srv", "--node", "n", "--host-key", "ssh-ed25519 AAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
        ),
        "error: --host-key: 'ssh-ed25519 AAAAAAAAAAAAAAAAAAAAAAAAAAAA' is not a ssh-ed25519 public key ssh can read",
    );
    assert_error(
        init(
            &root,
            &[
                "--server",
                "ssh://h/srv",
                "--node",
                "n",
                "--host-key",
                &format!("ssh-rsa {blob}"),
            ],
        ),
        &format!("error: --host-key: 'ssh-rsa {blob}' is not a ssh-rsa public key ssh can read"),
    );
    // A path that cannot stand in the forced command.
    assert_error(
        init(&root, &["--server", "ssh://h/srv/my tree", "--node", "n"]),
        "error: server path '/srv/my tree': a path with spaces, quotes, `\\`, `$` or backquotes cannot stand in the server's forced command; use a plain path",
    );
    // Under --root the node is never this machine's hostname.
    assert_error(
        init(&root, &["--server", "ssh://h/srv"]),
        &format!(
            "error: {} does not name the node: give --node NAME",
            root.join("etc/hostname").display()
        ),
    );
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
    // A commented config (as the package installs it) is not settings.
    fs::create_dir_all(root.join("etc/disco")).unwrap();
    fs::write(root.join("etc/disco/disco.toml"), "# server = \"…\"\n\n").unwrap();
    let mut c = assert_cmd::Command::cargo_bin("disco").unwrap();
    c.current_dir(f.dir.path())
        .args(["init", "--server", "srv/disco", "--node", "n", "--root"])
        .arg(&root);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no key is needed"), "{out}");
    // A relative path means where init ran, which cron's directory is not.
    let written = fs::read_to_string(root.join("etc/disco/disco.toml")).unwrap();
    assert!(
        written.contains(&format!(
            "server = \"{}\"\n",
            f.dir.path().join("srv/disco").display()
        )),
        "{written}"
    );
    assert!(!root.join("etc/disco/id_ed25519").exists());
}

/// `disco init` on a terminal: the fingerprint is shown and the answer
/// typed decides (a pty stands for the admin's terminal).
fn init_on_a_terminal(root: &Path, uri: &str, answer: &str) -> (i32, String) {
    use std::io::{Read, Write};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_disco"));
    cmd.env_remove("NOOP")
        .env("NO_COLOR", "1")
        .args(["init", "--node", "n", "--server", uri, "--root"])
        .arg(root);
    let (mut child, mut master) = common::spawn_on_terminal(cmd);
    // Typed ahead: the terminal keeps it until disco reads its answer.
    master.write_all(answer.as_bytes()).unwrap();
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the child has exited and the pty has no writer (EIO).
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        shown.extend_from_slice(&buf[..n]);
    }
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&shown).into_owned())
}

#[test]
fn init_asks_on_a_terminal_and_pins_only_on_yes() {
    let f = Fixture::new();
    let sshd = Sshd::start(&f.dir.path().join("sshd"), &[]);
    let uri = sshd.uri("/srv/disco");
    let print = host_fingerprint(&sshd);
    let root = f.dir.path().join("root");
    fs::create_dir_all(&root).unwrap();

    let (code, shown) = init_on_a_terminal(&root, &uri, "n\n");
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains(&format!(
            "The server 127.0.0.1 has the host key {print} (ssh-ed25519)."
        )),
        "{shown}"
    );
    assert!(
        shown.contains("error: host key not confirmed: nothing pinned"),
        "{shown}"
    );
    assert!(!root.join("etc/disco").exists());

    let (code, shown) = init_on_a_terminal(&root, &uri, "y\n");
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("command=\"disco serve --root /srv/disco --node n\",restrict ssh-ed25519 "),
        "{shown}"
    );
    assert!(fs::read_to_string(root.join("etc/disco/known_hosts"))
        .unwrap()
        .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)));
}
