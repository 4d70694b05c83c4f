//! Candidates on the server: `disco publish --candidate` and
//! `--drop-candidate`, what `disco serve` offers (the welcome's
//! `candidate`, a hello asking for it) through a real sshd with one
//! forced key per node, `disco promote` for a group, some nodes or all,
//! and pruning that keeps every linked snapshot.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::sshd::{forced, keygen, Sshd};
use common::{assert_error, run, Fixture};
use disco::transport::wire::{Msg, Wire, VERSION};

const NODES: [&str; 3] = ["db1", "web1", "web2"];

/// A server tree (nodes web1 and web2 in group `web`, db1 alone; each
/// with a `version` parameter), the directory it is published into, and a
/// private sshd holding one forced `disco serve --node N` key per node.
struct Server {
    f: Fixture,
    served: PathBuf,
    sshd: Sshd,
    keys: PathBuf,
}

fn server() -> Server {
    let f = Fixture::new();
    f.module("m", "").file("modules/m/files/etc/m.conf", "m\n");
    for n in NODES {
        f.node(n, &["m"]);
    }
    f.group("web1", "web").group("web2", "web");
    f.file("parameters/web/parameters/role", "web\n");
    set_version(&f, "1");
    let served = f.dir.path().join("served");
    let keys = f.dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let lines: Vec<String> = NODES
        .iter()
        .map(|n| forced(&keygen(&keys.join(n)), &served, Some(n)))
        .collect();
    let sshd = Sshd::start(&f.dir.path().join("sshd"), &lines);
    Server {
        f,
        served,
        sshd,
        keys,
    }
}

/// Every node's `version` parameter in the source tree.
fn set_version(f: &Fixture, v: &str) {
    for n in NODES {
        f.file(
            &format!("parameters/{n}/parameters/version"),
            &format!("{v}\n"),
        );
    }
}

impl Server {
    /// `disco publish SRC --root SERVED ARGS`.
    fn publish(&self, args: &[&str]) -> (i32, String, String) {
        self.f.publish(&self.served, args)
    }

    /// Publishes the source tree (`args` e.g. `--candidate`); its id.
    fn published(&self, args: &[&str]) -> String {
        let (code, _, err) = self.publish(args);
        assert_eq!(code, 0, "{err}");
        let id = err
            .split("as snapshot ")
            .nth(1)
            .and_then(|r| r.split([';', ',']).next())
            .unwrap_or_else(|| panic!("no id in {err}"));
        id.to_string()
    }

    /// `disco ARGS --root SERVED`.
    fn disco(&self, args: &[&str]) -> (i32, String, String) {
        run(self
            .f
            .disco_without_server()
            .args(args)
            .arg("--root")
            .arg(&self.served))
    }

    /// The snapshot `root/rel` links to (its id), if any.
    fn link(&self, rel: &str) -> Option<String> {
        let t = fs::read_link(self.served.join(rel)).ok()?;
        Some(t.file_name().unwrap().to_string_lossy().into_owned())
    }

    /// The served directory's links and snapshots, to compare before and after.
    fn links(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<_> = ["current", "candidate"]
            .iter()
            .map(|l| (l.to_string(), self.link(l)))
            .collect();
        for n in NODES {
            out.push((n.into(), self.link(&format!("pinned/{n}"))));
        }
        let mut snaps: Vec<_> = fs::read_dir(self.served.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        snaps.sort();
        out.push(("snapshots".into(), Some(snaps.join(" "))));
        out
    }

    /// What `disco serve` (node `node`'s forced key, through sshd)
    /// welcomes a hello with `candidate` with: (snapshot, candidate), or
    /// the error it sent.
    fn welcome(&self, node: &str, candidate: bool) -> Result<(String, Option<String>), String> {
        let mut ssh = Command::new("ssh")
            .args(["-T", "-o", "BatchMode=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.sshd.dir.join("known_hosts").display()
            ))
            .arg("-i")
            .arg(self.keys.join(node))
            .args(["-p", &self.sshd.port.to_string(), "root@127.0.0.1", "x"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut wire = Wire::new(ssh.stdout.take().unwrap(), ssh.stdin.take().unwrap());
        wire.say(
            &Msg::Hello {
                version: VERSION,
                node: node.into(),
                max_file_size: 1 << 30,
                candidate,
            },
            &[],
        )
        .unwrap();
        let answer = match wire.recv() {
            Ok((
                Msg::Welcome {
                    snapshot,
                    candidate,
                    ..
                },
                _,
            )) => {
                wire.say(&Msg::Bye, &[]).unwrap();
                Ok((snapshot, candidate))
            }
            Ok((other, _)) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        drop(wire);
        ssh.wait().unwrap();
        answer
    }

    /// Node `node` fetches over ssh (`disco plan`, its own state dir) and
    /// reads its `version` parameter from what it fetched; also the fetch's
    /// stderr.
    fn fetched_version(&self, node: &str) -> (String, String) {
        fs::write(
            self.f.config(),
            self.sshd.client_config(&self.keys.join(node)),
        )
        .unwrap();
        let state = self.f.dir.path().join(format!("state-{node}"));
        let uri = self.sshd.uri(self.served.to_str().unwrap());
        let (code, _, err) = run(self
            .f
            .disco_with_state(&state)
            .args(["--server", &uri, "--node", node, "plan"]));
        assert_eq!(code, 0, "{err}");
        let (code, out, e) = run(self
            .f
            .disco_with_state(&state)
            .args(["--node", node, "param", "get", "version"]));
        assert_eq!(code, 0, "{e}");
        (out.trim().to_string(), err)
    }
}

/// The rows `disco promote` prints: node, snapshot, and `pinned` or not.
fn rows(out: &str) -> Vec<(String, String, bool)> {
    out.lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[0].to_string(),
                w[1].to_string(),
                w.get(2) == Some(&"pinned"),
            )
        })
        .collect()
}

fn row(node: &str, id: &str, pinned: bool) -> (String, String, bool) {
    (node.into(), id.into(), pinned)
}

#[test]
fn publish_candidate_leaves_current_alone_and_a_fetch_still_gets_current() {
    let s = server();
    let a = s.published(&[]);
    set_version(&s.f, "2");
    let (code, _, err) = s.publish(&["--candidate"]);
    assert_eq!(code, 0, "{err}");
    let b = s.link("candidate").expect("a candidate link");
    assert_ne!(a, b);
    assert_eq!(
        err,
        format!(
            "info: published {} as snapshot {b}, the candidate; {}/current (snapshot {a}) is unchanged\n",
            s.f.server().display(),
            s.served.display()
        )
    );
    assert_eq!(s.link("current"), Some(a.clone()));
    assert_eq!(
        fs::read_link(s.served.join("candidate")).unwrap(),
        Path::new("snapshots").join(&b)
    );
    let (version, err) = s.fetched_version("web1");
    assert_eq!(version, "1", "a node fetches current, not the candidate");
    assert!(err.contains(&format!("snapshot {a}")), "{err}");
    // A newer candidate replaces the older one.
    set_version(&s.f, "3");
    let c = s.published(&["--candidate"]);
    assert_eq!(s.link("candidate"), Some(c));
    assert_eq!(s.link("current"), Some(a));
}

#[test]
fn the_welcome_names_the_candidate_and_a_hello_can_ask_for_it() {
    let s = server();
    let a = s.published(&[]);
    assert_eq!(s.welcome("web1", false), Ok((a.clone(), None)));
    assert_eq!(
        s.welcome("web1", true),
        Err("server refused: no candidate is published on this server".into())
    );
    set_version(&s.f, "2");
    let b = s.published(&["--candidate"]);
    assert_eq!(s.welcome("web1", false), Ok((a.clone(), Some(b.clone()))));
    assert_eq!(s.welcome("db1", false), Ok((a, Some(b.clone()))));
    assert_eq!(s.welcome("web1", true), Ok((b, None)));
}

#[test]
fn promote_group_pins_only_its_nodes_and_is_idempotent() {
    let s = server();
    let a = s.published(&[]);
    set_version(&s.f, "2");
    let b = s.published(&["--candidate"]);
    let (code, out, err) = s.disco(&["promote", "--group", "web"]);
    assert_eq!(code, 0, "{err}");
    // Before it acts, it says that no node of the group previewed it.
    assert_eq!(
        err,
        format!(
            "warning: 2 node(s) promoted have not reported a preview of the candidate {b}: web1, web2\n\
             info: promoted the candidate snapshot {b} for 2 node(s): web1, web2 (pinned in {}/pinned/); the others keep current\n",
            s.served.display()
        )
    );
    let want = vec![
        row("db1", &a, false),
        row("web1", &b, true),
        row("web2", &b, true),
    ];
    assert_eq!(rows(&out), want, "{out}");
    assert_eq!(
        fs::read_link(s.served.join("pinned/web1")).unwrap(),
        Path::new("../snapshots").join(&b)
    );
    assert_eq!(s.link("pinned/db1"), None);
    assert_eq!(
        (s.link("current"), s.link("candidate")),
        (Some(a.clone()), Some(b.clone()))
    );
    // Serve: the pinned nodes run the candidate (nothing more to offer),
    // db1 runs current and is offered the candidate.
    assert_eq!(s.welcome("web2", false), Ok((b.clone(), None)));
    assert_eq!(s.welcome("db1", false), Ok((a.clone(), Some(b.clone()))));
    assert_eq!(s.fetched_version("web1").0, "2");
    assert_eq!(s.fetched_version("db1").0, "1");
    // Again: nothing more changes, the same answer.
    let before = s.links();
    let (code, again, err) = s.disco(&["promote", "--group", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, out);
    assert_eq!(s.links(), before);
}

#[test]
fn promote_nodes_pins_only_those_and_noop_changes_nothing() {
    let s = server();
    let a = s.published(&[]);
    set_version(&s.f, "2");
    let b = s.published(&["--candidate"]);
    let before = s.links();
    let (code, out, err) = s.disco(&["promote", "--nodes", "db1", "web2", "--noop"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.starts_with(&format!(
            "warning: 2 node(s) promoted have not reported a preview of the candidate {b}: db1, web2\n\
             info: noop: would promote"
        )),
        "{err}"
    );
    assert_eq!(
        rows(&out),
        vec![
            row("db1", &b, true),
            row("web1", &a, false),
            row("web2", &b, true)
        ]
    );
    assert_eq!(s.links(), before, "--noop changed nothing");
    let (code, noop_out, err) = s.disco(&["promote", "--nodes", "db1", "web2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(noop_out, out, "noop said what the promotion did");
    assert_eq!(s.link("pinned/db1"), Some(b.clone()));
    assert_eq!(s.link("pinned/web2"), Some(b.clone()));
    assert_eq!(s.link("pinned/web1"), None);
    assert_eq!(s.welcome("web1", false), Ok((a, Some(b))));
}

#[test]
fn a_full_promote_moves_every_node_and_removes_the_pins() {
    let s = server();
    let a = s.published(&[]);
    set_version(&s.f, "2");
    let b = s.published(&["--candidate"]);
    assert_eq!(s.disco(&["promote", "--nodes", "db1"]).0, 0);
    let (code, out, err) = s.disco(&["promote"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!(
            "warning: 3 node(s) promoted have not reported a preview of the candidate {b}: db1, web1, web2\n\
             info: promoted the candidate snapshot {b} for every node: {}/current points to it, pins removed\n",
            s.served.display()
        )
    );
    assert_eq!(
        rows(&out),
        NODES.iter().map(|n| row(n, &b, false)).collect::<Vec<_>>()
    );
    assert_eq!(s.link("current"), Some(b.clone()));
    assert_eq!(s.link("candidate"), None);
    assert_eq!(fs::read_dir(s.served.join("pinned")).unwrap().count(), 0);
    for n in NODES {
        assert_eq!(s.welcome(n, false), Ok((b.clone(), None)), "{n}");
    }
    assert_eq!(s.fetched_version("web1").0, "2");
    // The old current is kept by --keep, not by a link any more.
    assert!(s.served.join("snapshots").join(&a).is_dir());
    // Nothing left to promote: said, nothing changed.
    let before = s.links();
    assert_error(
        s.disco(&["promote"]),
        &format!(
            "error: no candidate is published in {0}: disco publish SRC --root {0} --candidate first",
            s.served.display()
        ),
    );
    assert_eq!(s.links(), before);
}

/// Backing out sends every canary back to current, also one pinned to
/// a candidate the dropped one replaced (found by a trial: it kept
/// running that older candidate, which nothing named any more).
#[test]
fn drop_candidate_ends_the_preview_and_its_canaries() {
    let s = server();
    let a = s.published(&[]);
    set_version(&s.f, "2");
    let b0 = s.published(&["--candidate"]);
    assert_eq!(s.disco(&["promote", "--nodes", "web1"]).0, 0);
    // A new candidate: web1 stays on the first one, and is told of.
    set_version(&s.f, "3");
    let (code, _, err) = s.publish(&["--candidate"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "warning: 1 canary node(s) stay pinned to an earlier candidate: web1 ({b0}); `disco promote --nodes …` moves them to this one, `disco publish --drop-candidate` back to current"
        )),
        "{err}"
    );
    let b = s.link("candidate").unwrap();
    assert_ne!(b, b0);
    assert_eq!(s.disco(&["promote", "--nodes", "web2"]).0, 0);
    let (code, out, err) = s.disco(&["publish", "--drop-candidate"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(
        err,
        format!(
            "info: dropped the candidate snapshot {b} of {}; nodes no longer preview it, and the 2 canary node(s) pinned by a promotion run current again: web1, web2\n",
            s.served.display()
        )
    );
    assert_eq!((s.link("candidate"), s.link("pinned/web1")), (None, None));
    assert_eq!(s.link("pinned/web2"), None);
    assert_eq!(s.link("current"), Some(a.clone()));
    assert_eq!(s.welcome("web1", false), Ok((a, None)));
    assert_eq!(
        s.welcome("web1", true),
        Err("server refused: no candidate is published on this server".into())
    );
    let (code, _, err) = s.disco(&["publish", "--drop-candidate"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!(
            "info: {} has no candidate; nothing to drop\n",
            s.served.display()
        )
    );
}

#[test]
fn pruning_keeps_current_candidate_and_pinned_snapshots() {
    let s = server();
    let a = s.published(&["--keep", "1"]);
    set_version(&s.f, "2");
    let b = s.published(&["--candidate", "--keep", "1"]);
    assert_eq!(s.disco(&["promote", "--nodes", "web1"]).0, 0);
    set_version(&s.f, "3");
    let c = s.published(&["--candidate", "--keep", "1"]);
    let snap = |id: &str| s.served.join("snapshots").join(id).is_dir();
    assert!(snap(&a), "current is kept");
    assert!(snap(&b), "a pinned snapshot is kept");
    let d = s.published(&["--keep", "1"]);
    assert!(!snap(&a), "the old current, no longer linked, is pruned");
    assert!(snap(&b), "a pinned snapshot is kept");
    assert!(snap(&c), "the candidate is kept");
    assert!(snap(&d));
    assert_eq!(s.welcome("web1", false), Ok((b, Some(c))));
}

#[test]
fn bad_input_is_one_clear_line_and_changes_nothing() {
    let s = server();
    s.published(&[]);
    let before = s.links();
    assert_error(
        s.disco(&["promote", "--group", "web"]),
        &format!(
            "error: no candidate is published in {0}: disco publish SRC --root {0} --candidate first",
            s.served.display()
        ),
    );
    let b = s.published(&["--candidate"]);
    let before_promote = s.links();
    assert_ne!(before, before_promote);
    assert_error(
        s.disco(&["promote", "--group", "db"]),
        &format!("error: no node of the candidate snapshot {b} is in group 'db' (parameters/NODE/groups/db)"),
    );
    assert_error(
        s.disco(&["promote", "--nodes", "web1", "ghost"]),
        &format!("error: unknown node 'ghost': the candidate snapshot {b} has no parameters/ghost"),
    );
    assert_error(
        s.disco(&["promote", "--nodes", "web"]),
        &format!(
            "error: 'web' is a group in the candidate snapshot {b}, not a node: use --group web"
        ),
    );
    assert_error(
        s.disco(&["promote", "--nodes", "../x"]),
        "error: bad name '../x' at --nodes '../x': names must match [A-Za-z0-9._-]+ and not be '.' or '..'",
    );
    assert_eq!(
        s.links(),
        before_promote,
        "a refused promote changes nothing"
    );
    assert_error(
        run(s.f.disco_without_server().args(["promote", "--group", "web"])),
        "error: disco promote needs --root DIR, the served directory (it holds current and candidate)",
    );
    let missing = s.f.dir.path().join("nowhere");
    assert_error(
        run(s
            .f
            .disco_without_server()
            .args(["promote", "--root"])
            .arg(&missing)),
        &format!(
            "error: cannot open the served directory {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );
}

#[test]
fn promote_as_root_gives_pinned_to_the_served_directorys_owner() {
    use std::os::unix::fs::MetadataExt;
    let s = server();
    s.published(&[]);
    s.published(&["--candidate"]);
    let (uid, gid) = common::nobody_ids();
    let st = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(&s.served)
        .status()
        .unwrap();
    assert!(st.success());
    let (code, _, err) = s.disco(&["promote", "--group", "web"]);
    assert_eq!(code, 0, "{err}");
    let pinned = fs::metadata(s.served.join("pinned")).unwrap();
    assert_eq!(
        (pinned.uid(), pinned.gid(), pinned.mode() & 0o7777),
        (uid, gid, 0o700),
        "disco serve runs as the owner and must read the pins"
    );
}
