//! Secrets end to end (issue 22), as a fleet runs them: two nodes, `web1`
//! and `db1`, each a copy of the real Debian 12 root enrolled with
//! `disco init`, fetching over a real sshd on 127.0.0.1 whose forced
//! commands run `disco serve` on a directory `disco publish` fills from a
//! bare git repository's post-receive hook, with a pre-receive hook
//! running `disco lint` (the test's own pair, so that lint can be turned
//! off to push what it refuses; docs/fleet.md's shipped pre-receive hook,
//! which lints and publishes in one, is tested in tests/git_hooks.rs). The admins' tree is a git work
//! tree; `disco secret set` encrypts a value read from stdin. Checked: the
//! plaintext is nowhere but on db1 (git, packed objects, the bare
//! repository, the snapshots, web1's whole root), while db1's template
//! renders it; a node given another node's secret, a node enrolled again
//! with a new key and a node removed from a group cannot decrypt, and say
//! so in one line naming the secret and the fix; lint refuses a plaintext
//! secret and an undecryptable one.
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::root::pristine_view;
use common::sshd::{keygen, Sshd};

/// db1's database password: a `$`, a `'`, no trailing newline.
const DB_PASSWORD: &str = "Pa$$w'rd-Qx7";
/// Group `app`'s token.
const TOKEN: &str = "tok-Zr81-qv";
/// A plaintext secret the hooks must keep out of git.
const PLAIN: &str = "Plain-Zk93-text";

/// (exit code, stdout, stderr) of a command that must start.
fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `disco` with an environment that cannot change its settings.
fn disco() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_disco"));
    c.env_remove("NOOP")
        .env_remove("DISCO_SERVER")
        .env_remove("DISCO_NODE")
        .env("NO_COLOR", "1");
    c
}

/// `git ARGS` in `dir`, as the admin runs it: a fixed identity, `disco`
/// on PATH for the hooks a push runs.
fn git(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_disco")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    output(
        Command::new("git")
            .args([
                "-c",
                "user.name=admin",
                "-c",
                "user.email=admin@example.org",
            ])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "advice.ignoredHook=false",
            ])
            .args(args)
            .current_dir(dir)
            .env("PATH", path)
            .env_remove("NOOP")
            .env_remove("DISCO_SERVER")
            .env_remove("DISCO_NODE")
            .env("NO_COLOR", "1"),
    )
}

/// [`git`] that must succeed; its stdout.
fn git_ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = git(dir, args);
    assert_eq!(code, 0, "git {args:?}: {out}{err}");
    out
}

/// The files below `path` whose raw bytes hold `value` (`grep -r -F -a`:
/// symlinks not followed, devices skipped), but disco's scratch image.
/// That is a sparse file as big as the state dir's free space, which grep
/// reads as one endless line (OOM-killed at 24 GB here): [`node_hits`]
/// reads it by its data extents. grep runs under a memory limit, so any
/// other such file fails the test instead of the machine.
fn grep_r(path: &Path, value: &str) -> Vec<String> {
    let (code, out, err) = output(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 2097152; exec grep -r -F -a -l --exclude=scratch.img -e \"$0\" -- \"$1\"")
            .arg(value)
            .arg(path),
    );
    assert!(code == 0 || code == 1, "grep -r {}: {err}", path.display());
    out.lines().map(String::from).collect()
}

/// The files of a node's root that hold `value`: [`grep_r`], and the
/// written blocks (freed ones too) of the state dir's scratch image.
fn node_hits(root: &Path, value: &str) -> Vec<String> {
    let mut hits = grep_r(root, value);
    let scratch = root.join("var/lib/disco/scratch.img");
    assert!(scratch.is_file(), "the node danced");
    if sparse_file_holds(&scratch, value.as_bytes()) {
        hits.push(scratch.display().to_string());
    }
    hits
}

/// Whether the data extents (`SEEK_DATA`…`SEEK_HOLE`) of `path` hold
/// `needle`, read in bounded chunks.
fn sparse_file_holds(path: &Path, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let mut f = fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0i64;
    while at < len {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(f.as_raw_fd(), at, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data past `at`
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        // Between extents are zeros, which no value holds.
        f.seek(SeekFrom::Start(data as u64)).unwrap();
        let mut left = (hole - data) as usize;
        let mut carry: Vec<u8> = Vec::new();
        while left > 0 {
            let n = f.read(&mut buf[..left.min(1 << 20)]).unwrap();
            if n == 0 {
                break;
            }
            carry.extend_from_slice(&buf[..n]);
            if holds(&carry, needle) {
                return true;
            }
            carry.drain(..carry.len().saturating_sub(needle.len()));
            left -= n;
        }
        at = hole;
    }
    false
}

/// Every object of the repository at `git_dir`, uncompressed (loose and
/// packed alike: a packfile's objects are zlib-compressed, so a grep of
/// the files cannot see into them).
fn all_objects(git_dir: &Path) -> Vec<u8> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn holds(haystack: &[u8], needle: impl AsRef<[u8]>) -> bool {
    let needle = needle.as_ref();
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// True when a push's output has `line` from a hook (git pads them).
fn said_remote(err: &str, line: &str) -> bool {
    err.lines()
        .any(|l| l.trim_end() == format!("remote: {line}"))
}

/// The server side: the admins' work tree, the bare repository with
/// fleet.md's hooks, the checkout and the served directory.
struct Server {
    work: PathBuf,
    bare: PathBuf,
    src: PathBuf,
    served: PathBuf,
    admin_key: PathBuf,
}

impl Server {
    /// `git add -A`, commit, push; the push's (exit code, stderr).
    fn push(&self, message: &str) -> (i32, String) {
        git_ok(&self.work, &["add", "-A"]);
        git_ok(&self.work, &["commit", "-q", "-m", message]);
        self.push_again()
    }

    /// Pushes what is committed: (exit code, stderr).
    fn push_again(&self) -> (i32, String) {
        let (code, _, err) = git(&self.work, &["push", "-q", "origin", "main"]);
        (code, err)
    }

    /// [`Server::push`] that must be accepted and publish a snapshot.
    fn publish(&self, message: &str) {
        git_ok(&self.work, &["add", "-A"]);
        git_ok(&self.work, &["commit", "-q", "-m", message]);
        self.published(message);
    }

    /// [`Server::push_again`] that must be accepted and publish.
    fn published(&self, what: &str) {
        let before = fs::read_link(self.served.join("current")).ok();
        let (code, err) = self.push_again();
        assert_eq!(code, 0, "push of {what:?}: {err}");
        assert!(err.contains("info: published "), "{err}");
        assert_ne!(fs::read_link(self.served.join("current")).ok(), before);
    }

    /// The pre-receive hook on (executable) or off.
    fn lint_hook(&self, on: bool) {
        let hook = self.bare.join("hooks/pre-receive");
        let mode = if on { 0o755 } else { 0o644 };
        fs::set_permissions(hook, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `disco secret ARGS --tree WORK`, `stdin` as the value.
    fn secret(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = disco()
            .arg("secret")
            .args(args)
            .arg("--tree")
            .arg(&self.work)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `disco secret rekey` with the admin's key, which must succeed;
    /// its stdout.
    fn rekey(&self) -> String {
        let id = self.admin_key.display().to_string();
        let (code, out, err) = self.secret(&["rekey", "--identity", &id], "");
        assert_eq!((code, err.as_str()), (0, ""), "{out}");
        out
    }

    /// `disco lint --server DIR`: (exit code, stdout).
    fn lint(&self, dir: &Path) -> (i32, String) {
        let (code, out, err) = output(disco().arg("lint").arg("--server").arg(dir));
        assert_eq!(err, "");
        (code, out)
    }

    /// A file of the work tree, parents made.
    fn write(&self, rel: &str, content: &str) {
        let p = self.work.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// Copies a file of the work tree to another place in it, by hand.
    fn copy(&self, from: &str, to: &str) {
        let to = self.work.join(to);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(self.work.join(from), to).unwrap();
    }
}

/// A node: a copy of the Debian root, its files written by `disco init`.
struct Node {
    name: &'static str,
    root: PathBuf,
}

impl Node {
    fn etc(&self) -> PathBuf {
        self.root.join("etc/disco")
    }

    /// `disco init --root ROOT` against `uri`, pinning `host_key`; the
    /// authorized_keys line it prints (with this binary for `disco`) and
    /// the node.pub line.
    /// `rotate`: again, over an enrolled node, with a new key.
    fn init(&self, uri: &str, host_key: &str, rotate: bool) -> (String, String) {
        let mut c = disco();
        c.args([
            "init",
            "--server",
            uri,
            "--node",
            self.name,
            "--host-key",
            host_key,
        ]);
        c.arg("--root").arg(&self.root);
        if rotate {
            c.args(["--force", "--new-key"]);
        }
        let (code, out, err) = output(&mut c);
        assert_eq!(code, 0, "{out}{err}");
        let lines: Vec<&str> = out.lines().collect();
        let authorized = lines
            .iter()
            .find(|l| l.starts_with("command=\"disco serve "))
            .unwrap_or_else(|| panic!("{out}"))
            .replacen(
                "disco serve",
                &format!("{} serve", env!("CARGO_BIN_EXE_disco")),
                1,
            );
        let at = lines
            .iter()
            .position(|l| l.starts_with("Record the node's key in the server tree as "))
            .unwrap_or_else(|| panic!("{out}"));
        let public = lines[at + 1..]
            .iter()
            .find(|l| !l.is_empty())
            .unwrap()
            .to_string();
        assert_eq!(
            format!("{public}\n"),
            fs::read_to_string(self.etc().join("id_ed25519.pub")).unwrap()
        );
        // The node's /etc is ROOT/etc here: a drop-in points the paths
        // init wrote (as the node sees them) at it. A small scratch image
        // (its default is the free space of the disk).
        fs::create_dir_all(self.etc().join("disco.d")).unwrap();
        fs::write(
            self.etc().join("disco.d/test.toml"),
            format!(
                "ssh_identity = \"{}\"\nssh_known_hosts = \"{}\"\nconnect_timeout = 5\nscratch_max = 268435456\n",
                self.etc().join("id_ed25519").display(),
                self.etc().join("known_hosts").display()
            ),
        )
        .unwrap();
        (authorized, public)
    }

    /// A live dance of this node on its root, over ssh.
    fn dance(&self) -> (i32, String, String) {
        output(
            disco()
                .arg("--config")
                .arg(self.etc().join("disco.toml"))
                .arg("--state-dir")
                .arg(self.root.join("var/lib/disco"))
                .arg("--root")
                .arg(&self.root)
                .args(["dance", "--detailed-exitcodes"]),
        )
    }

    /// A dance that must fail before anything runs with exactly one
    /// error line, returned; the root is left as it was.
    fn dance_refused(&self) -> String {
        let before = pristine_view(&self.root);
        let (code, out, err) = self.dance();
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        let errors: Vec<&str> = err.lines().filter(|l| !l.starts_with("info: ")).collect();
        assert_eq!(errors.len(), 1, "one line: {err}");
        assert_eq!(
            pristine_view(&self.root),
            before,
            "{}: wrote nothing",
            self.name
        );
        errors[0].to_string()
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.root.join(rel)).ok()
    }
}

/// The authorized_keys of the sshd: one forced line a node.
fn authorize(sshd: &Sshd, lines: &BTreeMap<&str, String>) {
    let text: String = lines.values().map(|l| format!("{l}\n")).collect();
    fs::write(sshd.dir.join("authorized_keys"), text).unwrap();
}

/// Where the plaintext of db1's password must never be: the work tree
/// and its history, the bare repository (files and objects), the
/// checkout, the snapshots, the serving user's cache, web1's whole root.
fn assert_db_password_nowhere(s: &Server, sshd: &Sshd, web1: &Node) {
    let (code, out, err) = git(&s.work, &["grep", "-F", "-e", DB_PASSWORD]);
    assert_eq!((code, out.as_str()), (1, ""), "git grep: {err}");
    let revs = git_ok(&s.work, &["rev-list", "--all"]);
    let mut args = vec!["grep", "-F", "-e", DB_PASSWORD];
    args.extend(revs.lines());
    let (code, out, err) = git(&s.work, &args);
    assert_eq!((code, out.as_str()), (1, ""), "git grep of history: {err}");
    for repo in [s.work.join(".git"), s.bare.clone()] {
        let objects = all_objects(&repo);
        assert!(
            holds(&objects, "-----BEGIN AGE ENCRYPTED FILE-----")
                && holds(&objects, "disco param get secrets/db_password"),
            "{}: the objects are read",
            repo.display()
        );
        assert!(!holds(&objects, DB_PASSWORD), "{}", repo.display());
    }
    for dir in [&s.work, &s.bare, &s.src, &s.served, &sshd.dir] {
        assert_eq!(grep_r(dir, DB_PASSWORD), Vec::<String>::new());
    }
    assert_eq!(node_hits(&web1.root, DB_PASSWORD), Vec::<String>::new());
}

#[test]
fn secrets_are_clear_only_on_their_node_and_rotate() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut roots = Vec::new();
    for n in ["web1", "db1"] {
        fs::create_dir_all(d.join(n)).unwrap();
        let Some(root) = common::debian::root(&d.join(n)) else {
            return; // said why on stderr
        };
        roots.push(root);
    }
    let web1 = Node {
        name: "web1",
        root: roots[0].clone(),
    };
    let db1 = Node {
        name: "db1",
        root: roots[1].clone(),
    };
    let s = Server {
        work: d.join("work"),
        bare: d.join("disco.git"),
        src: d.join("disco-src"),
        served: d.join("served"),
        admin_key: d.join("admin_ed25519"),
    };
    // The admin's key, with the comment `disco secret` names it by.
    let admin_pub = keygen(&s.admin_key);
    let admin_pub: Vec<&str> = admin_pub.split_whitespace().take(2).collect();
    let admin_pub = format!("{} admin@laptop", admin_pub.join(" "));

    // The sshd first: its host key is what the nodes pin.
    let sshd = Sshd::start(&d.join("sshd"), &[]);
    let host_key = fs::read_to_string(sshd.dir.join("host_key.pub")).unwrap();
    let uri = sshd.uri(s.served.to_str().unwrap());

    // The bare repository and its hooks, as docs/fleet.md makes them.
    git_ok(d, &["init", "-q", "--bare", s.bare.to_str().unwrap()]);
    fs::write(
        s.bare.join("hooks/pre-receive"),
        r#"#!/bin/sh
# Refuse a push to main that does not lint (see docs/modules.md).
set -e
while read -r old new ref; do
    [ "$ref" = refs/heads/main ] || continue
    dir=$(mktemp -d)
    git archive "$new" | tar -x -C "$dir"
    status=0
    disco lint --server "$dir" || status=$?
    rm -rf "$dir"
    [ "$status" -eq 0 ] || exit "$status"
done
"#,
    )
    .unwrap();
    fs::write(
        s.bare.join("hooks/post-receive"),
        format!(
            "#!/bin/sh\nset -e\nrm -rf {src} && mkdir -p {src}\n\
             git --work-tree={src} --git-dir={bare} checkout -f main\n\
             exec disco publish {src} --root {served} --keep 5\n",
            src = s.src.display(),
            bare = s.bare.display(),
            served = s.served.display()
        ),
    )
    .unwrap();
    s.lint_hook(true);
    fs::set_permissions(
        s.bare.join("hooks/post-receive"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    // Enrolment: each node's key, its forced line, its node.pub.
    let mut authorized = BTreeMap::new();
    let mut node_pub = BTreeMap::new();
    for n in [&web1, &db1] {
        let (line, public) = n.init(&uri, &host_key, false);
        authorized.insert(n.name, line);
        node_pub.insert(n.name, public);
    }
    authorize(&sshd, &authorized);

    // The admins' tree: web1 runs `web`, db1 runs `db`, both in group
    // `app`; each template reads secrets.
    fs::create_dir_all(&s.work).unwrap();
    git_ok(&s.work, &["init", "-q"]);
    git_ok(
        &s.work,
        &["remote", "add", "origin", s.bare.to_str().unwrap()],
    );
    s.write("recipients/admins", &format!("{admin_pub}\n"));
    for (n, m) in [("web1", "web"), ("db1", "db")] {
        s.write(&format!("parameters/{n}/modules/{m}"), "");
        s.write(&format!("parameters/{n}/groups/app"), "");
        s.write(
            &format!("parameters/{n}/node.pub"),
            &format!("{}\n", node_pub[n]),
        );
    }
    s.write("parameters/app/parameters/tier", "app\n");
    s.write(
        "modules/db/templates/etc/app.conf",
        "printf 'password=%s\\n' \"$(disco param get secrets/db_password)\"\n\
         printf 'token=%s\\n' \"$(disco param get secrets/token)\"\n",
    );
    s.write(
        "modules/web/templates/etc/web.conf",
        "printf 'token=%s\\n' \"$(disco param get secrets/token)\"\n",
    );
    let (code, out, err) = s.secret(
        &["set", "--node", "db1", "secrets/db_password"],
        DB_PASSWORD,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "encrypted parameters/db1/parameters/secrets/db_password to db1, admin@laptop\n"
    );
    let (code, out, err) = s.secret(&["set", "--group", "app", "secrets/token"], TOKEN);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "encrypted parameters/app/parameters/secrets/token to db1, web1, admin@laptop\n"
    );
    // The admin's key opens it; web1's does not.
    let show = |key: &Path| {
        let key = key.display().to_string();
        s.secret(
            &[
                "show",
                "--node",
                "db1",
                "secrets/db_password",
                "--identity",
                &key,
            ],
            "",
        )
    };
    let (code, out, err) = show(&s.admin_key);
    assert_eq!((code, out.as_str(), err.as_str()), (0, DB_PASSWORD, ""));
    let web1_key = web1.etc().join("id_ed25519");
    let (code, out, err) = show(&web1_key);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "error: parameters/db1/parameters/secrets/db_password: cannot decrypt with {}: not encrypted to this key\n",
            web1_key.display()
        )
    );
    let (code, out) = s.lint(&s.work);
    assert_eq!(
        (code, out.as_str()),
        (0, "lint: 2 nodes, 2 modules, no problem\n")
    );
    s.publish("two nodes, two secrets");

    // db1 renders its password and the group's token; web1 the token.
    let (code, out, err) = db1.dance();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.starts_with("info: fetch from ssh://root@127.0.0.1:"),
        "{err}"
    );
    let app_conf = format!("password={DB_PASSWORD}\ntoken={TOKEN}\n");
    assert_eq!(db1.read("etc/app.conf").unwrap(), app_conf);
    assert!(!err.contains(DB_PASSWORD), "the console masks it: {err}");
    let (code, out, err) = web1.dance();
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        web1.read("etc/web.conf").unwrap(),
        format!("token={TOKEN}\n")
    );
    // The greps for its absence can find it: they do, on db1.
    let hits = node_hits(&db1.root, DB_PASSWORD);
    assert!(
        hits.contains(&db1.root.join("etc/app.conf").display().to_string()),
        "{hits:?}"
    );
    // Not in the freed blocks of its scratch image: a run with secrets
    // gives them all back.
    let scratch = db1.root.join("var/lib/disco/scratch.img");
    assert!(!hits.contains(&scratch.display().to_string()), "{hits:?}");
    // Loose objects first, then packed ones.
    assert_db_password_nowhere(&s, &sshd, &web1);
    git_ok(&s.bare, &["gc", "-q"]);
    git_ok(&s.work, &["gc", "-q"]);
    assert!(
        fs::read_dir(s.bare.join("objects/pack")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".pack")),
        "git gc packed the objects"
    );
    assert_db_password_nowhere(&s, &sshd, &web1);

    // A plaintext secret: lint refuses it, and so does the pre-receive hook.
    s.write("parameters/db1/parameters/secrets/plain", PLAIN);
    let refusal = "error: parameters/db1/parameters/secrets/plain: not encrypted: disco secret set --node db1 secrets/plain";
    let (code, out) = s.lint(&s.work);
    assert_eq!(
        (code, out),
        (
            1,
            format!("{refusal}\nlint: 2 nodes, 2 modules, 1 problem\n")
        )
    );
    let (code, err) = s.push("a plaintext secret");
    assert_ne!(code, 0, "{err}");
    assert!(said_remote(&err, refusal), "{err}");
    assert!(!holds(&all_objects(&s.bare), PLAIN));
    assert_eq!(grep_r(&s.served, PLAIN), Vec::<String>::new());
    git_ok(&s.work, &["reset", "-q", "--hard", "HEAD~1"]);

    // web1 given db1's encrypted file by hand: lint refuses it (and the
    // hook); pushed past the hook, web1's dance fails in one line.
    s.copy(
        "parameters/db1/parameters/secrets/db_password",
        "parameters/web1/parameters/secrets/db_password",
    );
    let refusal = "error: parameters/web1/parameters/secrets/db_password: node web1 uses it but cannot decrypt it (not encrypted to parameters/web1/node.pub): disco secret rekey";
    let (code, out) = s.lint(&s.work);
    assert_eq!(
        (code, out),
        (
            1,
            format!("{refusal}\nlint: 2 nodes, 2 modules, 1 problem\n")
        )
    );
    let (code, err) = s.push("web1 gets db1's password");
    assert_ne!(code, 0, "{err}");
    assert!(said_remote(&err, refusal), "{err}");
    s.lint_hook(false);
    s.published("web1 gets db1's password, past the hook");
    s.lint_hook(true);
    let (code, out) = s.lint(&s.src);
    assert_eq!(
        (code, out),
        (
            1,
            format!("{refusal}\nlint: 2 nodes, 2 modules, 1 problem\n")
        )
    );
    let line = web1.dance_refused();
    assert_eq!(
        line,
        format!(
            "error: secrets/db_password (parameters/web1/parameters/secrets/db_password) cannot be decrypted with this node's key {}: not encrypted to this key; record this node's public key as parameters/web1/node.pub in the server tree and run `disco secret rekey` there",
            web1.etc().join("id_ed25519").display()
        )
    );
    assert_db_password_nowhere(&s, &sshd, &web1);
    fs::remove_dir_all(s.work.join("parameters/web1/parameters")).unwrap();
    s.publish("web1 without db1's password");

    // Rotation: db1's key replaced (`init --force --new-key`). Until the
    // secrets are re-encrypted its dance fails naming the secret and the
    // fix, and the rendered file keeps its value (never an empty one).
    let (line, public) = db1.init(&uri, &host_key, true);
    assert_ne!(public, node_pub["db1"], "a new key");
    authorized.insert("db1", line);
    authorize(&sshd, &authorized);
    let line = db1.dance_refused();
    assert_eq!(
        line,
        format!(
            "error: secrets/db_password (parameters/db1/parameters/secrets/db_password) cannot be decrypted with this node's key {}: not encrypted to this key; record this node's public key as parameters/db1/node.pub in the server tree and run `disco secret rekey` there",
            db1.etc().join("id_ed25519").display()
        )
    );
    assert_eq!(db1.read("etc/app.conf").unwrap(), app_conf);
    s.write("parameters/db1/node.pub", &format!("{public}\n"));
    assert_eq!(
        s.rekey(),
        "re-encrypted parameters/app/parameters/secrets/token to db1, web1, admin@laptop\n\
         re-encrypted parameters/db1/parameters/secrets/db_password to db1, admin@laptop\n\
         rekey: 2 re-encrypted, 0 up to date, 0 failed\n"
    );
    s.publish("db1's new key");
    fs::remove_file(db1.root.join("etc/app.conf")).unwrap();
    let (code, out, err) = db1.dance();
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(db1.read("etc/app.conf").unwrap(), app_conf);

    // web1 leaves group `app`: the token is re-encrypted without it, and
    // a copy of the new file in web1's own layer is of no use to it.
    fs::remove_file(s.work.join("parameters/web1/groups/app")).unwrap();
    assert_eq!(
        s.rekey(),
        "re-encrypted parameters/app/parameters/secrets/token to db1, admin@laptop\n\
         rekey: 1 re-encrypted, 1 up to date, 0 failed\n"
    );
    s.publish("web1 leaves app");
    let (code, out, err) = db1.dance();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(db1.read("etc/app.conf").unwrap(), app_conf);
    s.copy(
        "parameters/app/parameters/secrets/token",
        "parameters/web1/parameters/secrets/token",
    );
    s.lint_hook(false);
    s.publish("web1 gets the group's new token by hand");
    s.lint_hook(true);
    let line = web1.dance_refused();
    assert_eq!(
        line,
        format!(
            "error: secrets/token (parameters/web1/parameters/secrets/token) cannot be decrypted with this node's key {}: not encrypted to this key; record this node's public key as parameters/web1/node.pub in the server tree and run `disco secret rekey` there",
            web1.etc().join("id_ed25519").display()
        )
    );
    assert_eq!(
        web1.read("etc/web.conf").unwrap(),
        format!("token={TOKEN}\n")
    );

    // At the end, after every push and a last gc: still nowhere.
    git_ok(&s.bare, &["gc", "-q"]);
    assert_db_password_nowhere(&s, &sshd, &web1);
    eprintln!(
        "secrets end to end: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
