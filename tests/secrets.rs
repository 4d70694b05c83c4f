//! Secret parameters encrypted to each node's SSH key (`disco secret`):
//! what the tree holds, who can open it, what the node's dance does with
//! it, what lint refuses, rotation and group changes. The end-to-end run
//! over a real sshd and git on a Debian root is `tests/secrets_e2e.rs`.
mod common;

use common::root::FixtureRoot;
use common::sshd::keygen;
use common::{run, run_with_stdin, Fixture};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const PW: &str = "Pa$$w'rd-Qx7";
const TOKEN: &str = "tok-Sh4red-9911";

/// A fleet: nodes db1 and web1, both in group `app`; an admin key in
/// `recipients/admins`; each node's key recorded as `node.pub`; module
/// `app` renders `/etc/app.conf` from the secrets.
struct Fleet {
    f: Fixture,
    keys: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let f = Fixture::new();
        let keys = f.dir.path().join("keys");
        fs::create_dir(&keys).unwrap();
        for n in ["db1", "web1"] {
            f.node(n, &["app"]).group(n, "app");
            let public = keygen(&keys.join(n));
            f.file(&format!("parameters/{n}/node.pub"), &format!("{public}\n"));
        }
        f.node("app", &[]);
        let admin = keygen(&keys.join("admin"));
        let blob: Vec<&str> = admin.split_whitespace().take(2).collect();
        f.file(
            "recipients/admins",
            &format!("# the admins\n{} alice@laptop\n", blob.join(" ")),
        );
        f.module("app", "");
        f.module_file(
            "app",
            "templates/etc/app.conf",
            "printf 'pw=%s\\n' \"$(disco param get secrets/db_password)\"\nprintf 'token=%s\\n' \"$(disco param get secrets/token)\"\n",
            0o644,
        );
        Fleet { f, keys }
    }

    fn key(&self, who: &str) -> PathBuf {
        self.keys.join(who)
    }

    /// `disco secret ARGS` in the tree, with `stdin` as the value.
    fn secret(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_disco"));
        c.arg("secret")
            .args(args)
            .current_dir(self.f.server())
            .env("HOME", self.f.dir.path())
            .env("NO_COLOR", "1");
        run_with_stdin(c, stdin.as_bytes())
    }

    fn set(&self, owner: &[&str], key: &str, value: &str) {
        let mut args = vec!["set"];
        args.extend(owner);
        args.push(key);
        let r = self.secret(&args, value);
        assert_eq!(r.0, 0, "{r:?}");
    }

    /// The config of node `n`: its own key opens its secrets.
    fn config_for(&self, n: &str) -> PathBuf {
        let c = self.f.dir.path().join(format!("{n}.toml"));
        fs::write(
            &c,
            format!("ssh_identity = \"{}\"\n", self.key(n).display()),
        )
        .unwrap();
        c
    }

    /// `disco --node N ARGS` with N's config and state dir.
    fn disco(&self, n: &str, args: &[&str]) -> (i32, String, String) {
        let state = self.f.dir.path().join(format!("state-{n}"));
        run(assert_cmd::Command::cargo_bin("disco")
            .unwrap()
            .env_remove("NOOP")
            .env("NO_COLOR", "1")
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(self.config_for(n))
            .arg("--server")
            .arg(self.f.server())
            .args(["--node", n])
            .args(args))
    }

    fn dance(&self, n: &str, root: &Path, noop: bool) -> (i32, String, String) {
        let mut args = vec!["--root", root.to_str().unwrap(), "dance"];
        if noop {
            args.push("--noop");
        }
        self.disco(n, &args)
    }

    fn file(&self, rel: &str) -> Vec<u8> {
        fs::read(self.f.server().join(rel)).unwrap()
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file under `dir` holding `needle`.
fn grep_tree(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && contains(&fs::read(e.path()).unwrap(), needle) {
                hits.push(e.path());
            }
        }
    }
    hits
}

#[test]
fn set_encrypts_to_the_nodes_that_read_it_and_the_admins() {
    let t = Fleet::new();
    t.set(&["--node", "db1"], "secrets/db_password", PW);
    t.set(&["--group", "app"], "secrets/token", &format!("{TOKEN}\n"));

    let db = t.file("parameters/db1/parameters/secrets/db_password");
    assert!(db.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----\n"));
    assert!(grep_tree(&t.f.server(), PW).is_empty());
    assert!(grep_tree(&t.f.server(), TOKEN).is_empty());

    let (code, out, err) = t.secret(&["list"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "parameters/app/parameters/secrets/token: db1, web1, admin alice@laptop\n\
         parameters/db1/parameters/secrets/db_password: db1, admin alice@laptop\n"
    );

    // The admin reads it back, exactly; another key cannot.
    let admin = t.key("admin");
    let admin = admin.to_str().unwrap();
    let shown = t.secret(
        &[
            "show",
            "--node",
            "db1",
            "secrets/db_password",
            "--identity",
            admin,
        ],
        "",
    );
    assert_eq!(shown, (0, PW.to_string(), String::new()));
    let web1 = t.key("web1");
    let (code, out, err) = t.secret(
        &[
            "show",
            "--node",
            "db1",
            "secrets/db_password",
            "--identity",
            web1.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "error: parameters/db1/parameters/secrets/db_password: cannot decrypt with {}: not encrypted to this key\n",
            web1.display()
        )
    );
    // Without --identity: ~/.ssh/id_ed25519 ($HOME is the fixture's).
    let ssh = t.f.dir.path().join(".ssh");
    fs::create_dir(&ssh).unwrap();
    fs::copy(t.key("admin"), ssh.join("id_ed25519")).unwrap();
    let shown = t.secret(&["show", "--group", "app", "secrets/token"], "");
    assert_eq!(shown, (0, format!("{TOKEN}\n"), String::new()));
}

#[test]
fn set_refuses_what_it_cannot_keep_secret() {
    let t = Fleet::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["set", "--node", "db1", "db_password"],
            "error: 'db_password' is not a secret: secret keys are under secrets/ (e.g. secrets/db_password)",
        ),
        (
            &["set", "--node", "app", "secrets/x"],
            "error: app is a group (another entry of parameters/ lists it): use --group app",
        ),
        (
            &["set", "--group", "db1", "secrets/x"],
            "error: db1 is a node (no entry of parameters/ lists it as a group): use --node db1",
        ),
        (
            &["set", "--node", "db9", "secrets/x"],
            "error: no node db9: . has no parameters/db9",
        ),
    ];
    for (args, expected) in cases {
        let (code, out, err) = t.secret(args, "v\n");
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}: {err}");
        assert_eq!(err, format!("{expected}\n"), "{args:?}");
    }
    // An empty value is not written.
    let (code, _, err) = t.secret(&["set", "--node", "db1", "secrets/x"], "\n");
    assert_eq!(code, 1);
    assert_eq!(err, "error: the value is empty: nothing was written\n");
    // A reader without a recorded key: refused, naming the file to add.
    fs::remove_file(t.f.server().join("parameters/web1/node.pub")).unwrap();
    let (code, _, err) = t.secret(&["set", "--group", "app", "secrets/t"], "v\n");
    assert_eq!(code, 1);
    assert_eq!(err, "error: node web1 has no recorded key: add parameters/web1/node.pub (the line `disco init` printed on web1, or its /etc/disco/id_ed25519.pub)\n");
    // No admin key: nobody could show or rekey it.
    fs::remove_file(t.f.server().join("recipients/admins")).unwrap();
    let (code, _, err) = t.secret(&["set", "--node", "db1", "secrets/x"], "v\n");
    assert_eq!(code, 1);
    assert_eq!(err, "error: recipients/admins lists no key: add your SSH public key there (one key a line), or nobody could show or rekey this secret\n");
    assert!(!t
        .f
        .server()
        .join("parameters/db1/parameters/secrets")
        .exists());
    // And `disco param set` never writes a secret in clear.
    fs::create_dir_all(t.f.server().join("parameters/db1/parameters")).unwrap();
    let (code, _, err) = run(t
        .f
        .disco()
        .args(["param", "--tree"])
        .arg(t.f.server().join("parameters/db1/parameters"))
        .args(["set", "secrets/x", "v"]));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: secrets/x is a secret: secrets are stored encrypted"),
        "{err}"
    );
}

#[test]
fn a_node_opens_its_own_secrets_and_no_other_node_can() {
    let t = Fleet::new();
    t.set(&["--node", "db1"], "secrets/db_password", PW);
    t.set(&["--group", "app"], "secrets/token", TOKEN);
    let root = FixtureRoot::new(t.f.dir.path());

    let (code, out, err) = t.dance("db1", &root.path, false);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        fs::read_to_string(root.path.join("etc/app.conf")).unwrap(),
        format!("pw={PW}\ntoken={TOKEN}\n")
    );
    // What the dance printed shows the mask, never the value.
    assert!(err.contains("+pw=********"), "{err}");
    assert!(!out.contains(PW) && !err.contains(PW));

    // The node's own commands: get prints it, dump and explain mask it.
    let (code, got, _) = t.disco("db1", &["param", "get", "secrets/db_password"]);
    assert_eq!((code, got.as_str()), (0, PW));
    // `get` reads one key's path: the group's secret, opened the same way;
    // the directory and a missing secret, the same errors as the whole tree.
    let (code, got, _) = t.disco("db1", &["param", "get", "secrets/token"]);
    assert_eq!((code, got.as_str()), (0, TOKEN));
    let (code, _, err) = t.disco("db1", &["param", "get", "secrets"]);
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "error: parameter 'secrets' is a directory: use `disco param keys secrets`\n"
        )
    );
    let (code, _, err) = t.disco("db1", &["param", "get", "secrets/nope"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "error: no parameter 'secrets/nope'\n")
    );
    let (_, dump, _) = t.disco("db1", &["param", "dump", "secrets"]);
    assert_eq!(
        dump,
        "secrets = {}\nsecrets/db_password = ******** (secret)\nsecrets/token = ******** (secret)\n"
    );
    let (_, explained, _) = t.disco("db1", &["param", "explain", "secrets/token"]);
    assert_eq!(
        explained,
        "parameters/app/parameters/secrets/token = ******** (secret)   <- wins\n"
    );
    let (_, shown, _) = t.disco("db1", &["param", "dump", "--show-secrets", "secrets"]);
    assert!(
        shown.contains(&format!("secrets/db_password = {PW}\n")),
        "{shown}"
    );
    let (_, shown, _) = t.disco(
        "db1",
        &["param", "explain", "--show-secrets", "secrets/token"],
    );
    assert_eq!(
        shown,
        format!("parameters/app/parameters/secrets/token = {TOKEN}   <- wins\n")
    );

    // A failed live dance leaves no run dir (its parameters, its layers),
    // and nothing in the state dir holds the value.
    t.f.module_file("app", "scripts/10-fail", "echo failing; exit 3\n", 0o755);
    let (code, _, err) = t.dance("db1", &root.path, false);
    assert_eq!(code, 1, "{err}");
    let state = t.f.dir.path().join("state-db1");
    assert_eq!(fs::read_dir(state.join("run")).unwrap().count(), 0);
    assert_eq!(grep_tree(&state, PW), Vec::<PathBuf>::new());
    assert_eq!(grep_tree(&state, TOKEN), Vec::<PathBuf>::new());
    fs::remove_file(t.f.server().join("modules/app/scripts/10-fail")).unwrap();

    // web1 given db1's file by hand: one line naming the secret and the
    // fix, nothing rendered, nothing merged.
    fs::create_dir(t.f.dir.path().join("w")).unwrap();
    let web_root = FixtureRoot::new(&t.f.dir.path().join("w"));
    fs::create_dir_all(t.f.server().join("parameters/web1/parameters/secrets")).unwrap();
    fs::copy(
        t.f.server()
            .join("parameters/db1/parameters/secrets/db_password"),
        t.f.server()
            .join("parameters/web1/parameters/secrets/db_password"),
    )
    .unwrap();
    let (code, out, err) = t.dance("web1", &web_root.path, false);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "error: secrets/db_password (parameters/web1/parameters/secrets/db_password) cannot be decrypted with this node's key {}: not encrypted to this key; record this node's public key as parameters/web1/node.pub in the server tree and run `disco secret rekey` there\n",
            t.key("web1").display()
        )
    );
    assert!(!web_root.path.join("etc/app.conf").exists());
    // Nothing of the value anywhere in web1's root or state.
    assert!(grep_tree(&web_root.path, PW).is_empty());
    assert!(grep_tree(&t.f.dir.path().join("state-web1"), PW).is_empty());
}

#[test]
fn rotation_needs_a_rekey_and_a_node_out_of_a_group_loses_its_secrets() {
    let t = Fleet::new();
    t.set(&["--node", "db1"], "secrets/db_password", PW);
    t.set(&["--group", "app"], "secrets/token", TOKEN);
    let root = FixtureRoot::new(t.f.dir.path());
    assert_eq!(t.dance("db1", &root.path, true).0, 0);

    // db1 gets a new key (as `disco init --force` makes): its dance fails
    // with one line naming the secret and the fix, never an empty value.
    for ext in ["", ".pub"] {
        fs::remove_file(format!("{}{ext}", t.key("db1").display())).unwrap();
    }
    let public = keygen(&t.key("db1"));
    let (code, _, err) = t.dance("db1", &root.path, true);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: secrets/db_password (parameters/db1/parameters/secrets/db_password) cannot be decrypted with this node's key"),
        "{err}"
    );
    assert!(err.ends_with("run `disco secret rekey` there\n"), "{err}");

    // Recorded, rekeyed: the node opens both again.
    fs::write(
        t.f.server().join("parameters/db1/node.pub"),
        format!("{public}\n"),
    )
    .unwrap();
    let (code, _, _) = t.secret(&["list"], "");
    assert_eq!(code, 1, "list says a rekey is due");
    let admin = t.key("admin");
    let (code, out, err) = t.secret(&["rekey", "--identity", admin.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.ends_with("rekey: 2 re-encrypted, 0 up to date, 0 failed\n"),
        "{out}"
    );
    let (code, out, err) = t.dance("db1", &root.path, false);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        fs::read_to_string(root.path.join("etc/app.conf")).unwrap(),
        format!("pw={PW}\ntoken={TOKEN}\n")
    );
    // A second rekey has nothing to do.
    let (_, out, _) = t.secret(&["rekey", "--identity", admin.to_str().unwrap()], "");
    assert_eq!(out, "rekey: 0 re-encrypted, 2 up to date, 0 failed\n");

    // web1 leaves group app; after the rekey, the group's new token file
    // is not for web1, even when handed to it.
    fs::remove_file(t.f.server().join("parameters/web1/groups/app")).unwrap();
    let (_, out, _) = t.secret(&["rekey", "--identity", admin.to_str().unwrap()], "");
    assert!(
        out.starts_with(
            "re-encrypted parameters/app/parameters/secrets/token to db1, alice@laptop\n"
        ),
        "{out}"
    );
    fs::create_dir_all(t.f.server().join("parameters/web1/parameters/secrets")).unwrap();
    fs::copy(
        t.f.server().join("parameters/app/parameters/secrets/token"),
        t.f.server()
            .join("parameters/web1/parameters/secrets/token"),
    )
    .unwrap();
    fs::create_dir(t.f.dir.path().join("w")).unwrap();
    let web_root = FixtureRoot::new(&t.f.dir.path().join("w"));
    let (code, _, err) = t.dance("web1", &web_root.path, true);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "error: secrets/token (parameters/web1/parameters/secrets/token) cannot be decrypted"
        ),
        "{err}"
    );
}

#[test]
fn lint_refuses_plaintext_undecryptable_and_keyless_secrets() {
    let t = Fleet::new();
    t.set(&["--group", "app"], "secrets/token", TOKEN);
    let lint = || run(t.f.disco().args(["lint", "--server"]).arg(t.f.server()));
    let (code, out, _) = lint();
    assert_eq!(
        (code, out.as_str()),
        (0, "lint: 2 nodes, 1 module, no problem\n")
    );

    // A plaintext secret, a node added to the group after the secret was
    // set (it cannot decrypt it), a node with secrets but no key, and a
    // module default under secrets/.
    t.f.file("parameters/db1/parameters/secrets/db_password", "hunter2\n");
    t.f.node("web2", &["app"]).group("web2", "app");
    t.f.file("modules/app/parameters/secrets/default", "x\n");
    let (code, out, _) = lint();
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "error: modules/app/parameters/secrets/default: a module's default cannot be a secret (every node running the module would need to read it): set it per node or group with `disco secret set`\n\
         error: parameters/db1/parameters/secrets/db_password: not encrypted: disco secret set --node db1 secrets/db_password\n\
         error: parameters/web2: has secrets, but node web2 has no recorded key: add parameters/web2/node.pub (the line `disco init` printed on web2, or its /etc/disco/id_ed25519.pub)\n\
         lint: 3 nodes, 1 module, 3 problems\n"
    );
    // web2 enrolled: now the one thing wrong is that it cannot decrypt.
    fs::remove_dir_all(t.f.server().join("modules/app/parameters")).unwrap();
    fs::remove_file(
        t.f.server()
            .join("parameters/db1/parameters/secrets/db_password"),
    )
    .unwrap();
    let public = keygen(&t.key("web2"));
    t.f.file("parameters/web2/node.pub", &format!("{public}\n"));
    let (code, out, _) = lint();
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "error: parameters/app/parameters/secrets/token: node web2 uses it but cannot decrypt it (not encrypted to parameters/web2/node.pub): disco secret rekey\n\
         lint: 3 nodes, 1 module, 1 problem\n"
    );
    let admin = t.key("admin");
    assert_eq!(
        t.secret(&["rekey", "--identity", admin.to_str().unwrap()], "")
            .0,
        0
    );
    assert_eq!(lint().0, 0);
    // A node.pub that is not a key is said at that file.
    t.f.file(
        "parameters/web2/node.pub",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP\n",
    );
    let (_, out, _) = lint();
    assert!(
        out.starts_with(
            "error: parameters/web2/node.pub:1: not an SSH public key age can encrypt to"
        ),
        "{out}"
    );
}

#[test]
fn a_plaintext_secret_still_works_with_a_warning_and_rekey_encrypts_it() {
    let t = Fleet::new();
    t.f.file(
        "parameters/db1/parameters/secrets/db_password",
        &format!("{PW}\n"),
    );
    t.f.file(
        "parameters/app/parameters/secrets/token",
        &format!("{TOKEN}\n"),
    );
    let root = FixtureRoot::new(t.f.dir.path());
    let (code, _, err) = t.dance("db1", &root.path, true);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: secrets/db_password is not encrypted in the server tree (parameters/db1/parameters/secrets/db_password): any account that can read the tree can read it; encrypt it with `disco secret set`\n"), "{err}");
    let admin = t.key("admin");
    let (code, out, _) = t.secret(&["rekey", "--identity", admin.to_str().unwrap()], "");
    assert_eq!(code, 0);
    assert!(out.contains("(it was plaintext: git's history still holds it; change the value)"));
    assert!(grep_tree(&t.f.server(), PW).is_empty());
    let (code, _, err) = t.dance("db1", &root.path, false);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(
        fs::read_to_string(root.path.join("etc/app.conf")).unwrap(),
        format!("pw={PW}\ntoken={TOKEN}\n")
    );
}

/// `disco secret set` on a terminal: asked twice, nothing echoed; two
/// different answers write nothing.
#[test]
fn set_asks_twice_on_a_terminal_without_echo() {
    use std::io::Read;
    let t = Fleet::new();
    let typed = |answers: [&str; 2]| -> (i32, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_disco"));
        cmd.args(["secret", "set", "--node", "db1", "secrets/typed"])
            .current_dir(t.f.server())
            .env("NO_COLOR", "1");
        let (mut child, mut master) = common::spawn_on_terminal(cmd);
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        let mut next = 0;
        // Each answer is typed once its prompt is on the screen (echo is
        // off by then), until the child exits and the pty ends (EIO).
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&shown).into_owned();
            let prompts = text.matches("(not shown): ").count() + text.matches("again: ").count();
            while next < prompts.min(2) {
                master
                    .write_all(format!("{}\n", answers[next]).as_bytes())
                    .unwrap();
                next += 1;
            }
        }
        let code = child.wait().unwrap().code().unwrap_or(-1);
        (code, String::from_utf8_lossy(&shown).into_owned())
    };
    let (code, shown) = typed(["typed-S3cret", "typed-S3cret"]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.starts_with("value of secrets/typed (not shown): "),
        "{shown}"
    );
    assert!(!shown.contains("typed-S3cret"), "echoed: {shown}");
    assert!(
        shown.contains("encrypted parameters/db1/parameters/secrets/typed to db1, alice@laptop"),
        "{shown}"
    );
    let admin = t.key("admin");
    let shown = t.secret(
        &[
            "show",
            "--node",
            "db1",
            "secrets/typed",
            "--identity",
            admin.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(
        shown.1, "typed-S3cret\n",
        "a typed value ends with a newline"
    );

    let (code, shown) = typed(["one-value", "another-one"]);
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains("error: the two values differ: nothing was written"),
        "{shown}"
    );
    assert!(!shown.contains("one-value"), "{shown}");
}

/// A published snapshot holds the ciphertext and the admins' keys, so
/// `disco lint` of what is served checks the secrets too.
#[test]
fn a_published_snapshot_is_linted_with_its_recipients() {
    let t = Fleet::new();
    t.set(&["--group", "app"], "secrets/token", TOKEN);
    let served = t.f.dir.path().join("served");
    let (code, _, err) = run(t
        .f
        .disco()
        .arg("publish")
        .arg(t.f.server())
        .arg("--root")
        .arg(&served));
    assert_eq!(code, 0, "{err}");
    assert!(grep_tree(&served, TOKEN).is_empty());
    let current = served.join("current");
    assert!(current.join("recipients/admins").is_file());
    let (code, out, _) = run(t.f.disco().args(["lint", "--server"]).arg(&current));
    assert_eq!(
        (code, out.as_str()),
        (0, "lint: 2 nodes, 1 module, no problem\n")
    );
}

/// `disco shell --module` stands where the module's scripts run: its
/// secrets are opened, as in a dance. The shell's own terminal is the
/// admin's (like `disco param get`, it prints what it is asked for).
#[test]
fn a_module_shell_sees_the_opened_secrets() {
    let t = Fleet::new();
    t.set(&["--node", "db1"], "secrets/db_password", PW);
    t.set(&["--group", "app"], "secrets/token", TOKEN);
    let root = FixtureRoot::new(t.f.dir.path());
    assert_eq!(t.disco("db1", &["plan"]).0, 0);
    let state = t.f.dir.path().join("state-db1");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_disco"));
    c.env("NO_COLOR", "1")
        .arg("--config")
        .arg(t.config_for("db1"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--node", "db1", "--root"])
        .arg(&root.path)
        .args(["shell", "--module", "app"]);
    let (_, stdout, _) = run_with_stdin(
        c,
        b"printf %s \"$(disco param get secrets/db_password)\" | md5sum\ndisco param get secrets/db_password\n",
    );
    let (_, digest, _) = run_with_stdin(std::process::Command::new("md5sum"), PW.as_bytes());
    assert!(stdout.contains(digest.trim()), "{stdout}");
    assert!(stdout.contains(PW), "{stdout}");
}
