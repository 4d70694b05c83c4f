//! The preview of a candidate across a fleet (issue 27): three fixture
//! nodes on different roots fetch over a real sshd from a served
//! directory with a published current; `disco publish --candidate`
//! offers a candidate; each node's live dance runs its own current, then
//! noops the candidate on its root and uploads that report; `disco report
//! --fleet --candidate` groups them — one node where the candidate's
//! change applies, one already converged, one where a module of the
//! candidate fails — and exits 2 until every node reported, then 1. No
//! root is changed by a preview, and a node without a candidate does
//! nothing more than its dance.
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::root::{snapshot_no_mtimes, FixtureRoot};
use common::sshd::{keygen, Sshd};
use common::{run, Fixture};

/// The nodes of the fleet, each on its own root.
const NODES: [&str; 3] = ["apply", "same", "broken"];

/// A fleet: the server tree (the fixture's, published into `served`),
/// an sshd whose forced command logs each session, and per node a root,
/// a state dir, a key and a config.
struct Fleet {
    f: Fixture,
    served: PathBuf,
    sshd: Sshd,
    roots: Vec<FixtureRoot>,
}

impl Fleet {
    fn new() -> Fleet {
        let f = Fixture::new();
        for n in NODES {
            f.node(n, &["app"]);
        }
        // `apply` is in group canary.
        f.node("canary", &[]).group("apply", "canary");
        f.module("app", "");
        f.module_file("app", "files/etc/app.conf", "v1\n", 0o644);
        let served = f.dir.path().join("served");
        fs::create_dir(&served).unwrap();
        fs::set_permissions(&served, fs::Permissions::from_mode(0o700)).unwrap();
        // The forced command: log the session, then serve.
        let wrapper = f.dir.path().join("serve-logged");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\nexec {} serve \"$@\"\n",
                f.dir.path().join("sessions.log").display(),
                env!("CARGO_BIN_EXE_disco")
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        let mut authorized = Vec::new();
        let mut roots = Vec::new();
        for n in NODES {
            let home = f.dir.path().join(format!("node-{n}"));
            fs::create_dir(&home).unwrap();
            let pubkey = keygen(&home.join("key"));
            authorized.push(format!(
                "command=\"{} --root {} --node {n}\",restrict {pubkey}",
                wrapper.display(),
                served.display()
            ));
            roots.push(FixtureRoot::new(&home));
        }
        let sshd = Sshd::start(&f.dir.path().join("sshd"), &authorized);
        for n in NODES {
            let home = f.dir.path().join(format!("node-{n}"));
            fs::write(
                home.join("disco.toml"),
                sshd.client_config(&home.join("key")) + "report_upload = true\npreview = true\n",
            )
            .unwrap();
        }
        Fleet {
            f,
            served,
            sshd,
            roots,
        }
    }

    fn home(&self, node: &str) -> PathBuf {
        self.f.dir.path().join(format!("node-{node}"))
    }

    fn root(&self, node: &str) -> &FixtureRoot {
        &self.roots[NODES.iter().position(|n| *n == node).unwrap()]
    }

    /// `disco publish SRC --root SERVED [args]`.
    fn publish(&self, args: &[&str]) -> (i32, String, String) {
        self.f.publish(&self.served, args)
    }

    /// `disco …` as `node`: its config, state dir, server and root.
    fn disco(&self, node: &str, args: &[&str]) -> (i32, String, String) {
        let home = self.home(node);
        let mut c = assert_cmd::Command::cargo_bin("disco").unwrap();
        c.env_remove("NOOP")
            .env_remove("DISCO_SERVER")
            .env_remove("DISCO_NODE")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(home.join("disco.toml"))
            .arg("--state-dir")
            .arg(home.join("state"))
            .args(["--server", &self.sshd.uri(self.served.to_str().unwrap())])
            .args(["--node", node, "--root"])
            .arg(&self.root(node).path)
            .args(args);
        run(&mut c)
    }

    /// A live dance of `node`, which must succeed: its own run.
    fn dance(&self, node: &str) -> String {
        let (code, _, err) = self.disco(node, &["dance"]);
        assert_eq!(code, 0, "{node}'s own dance: {err}");
        assert!(!err.contains("error:"), "{err}");
        err
    }

    /// `disco report --fleet [args] --server SERVED` on the server.
    fn fleet(&self, args: &[&str]) -> (i32, String, String) {
        run(self
            .f
            .disco_without_server()
            .arg("--server")
            .arg(&self.served)
            .args(["report", "--fleet"])
            .args(args))
    }

    fn sessions(&self) -> Vec<String> {
        fs::read_to_string(self.f.dir.path().join("sessions.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The id `ROOT/LINK` points to.
    fn id(&self, link: &str) -> String {
        fs::read_link(self.served.join(link))
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

/// The node's own last report, as `disco report --json` shows it.
fn own_report(fleet: &Fleet, node: &str) -> serde_json::Value {
    let (code, out, err) = fleet.disco(node, &["report", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_fleet_previews_a_candidate_in_three_groups_and_no_root_changes() {
    let fleet = Fleet::new();
    fleet.root("same").file("etc/motd", "hello\n");
    fleet.root("broken").file("etc/nocheck", "");
    assert_eq!(fleet.publish(&[]).0, 0);
    let current = fleet.id("current");

    // No candidate: each dance is its own run alone — no preview line,
    // one fetch session (and the upload of its report), no preview dir.
    for n in NODES {
        let err = fleet.dance(n);
        assert!(!err.contains("previewed"), "{err}");
        assert!(!fleet.home(n).join("state/preview").exists());
    }
    let sessions = fleet.sessions();
    assert_eq!(sessions.len(), 2 * NODES.len(), "{sessions:?}");
    for n in NODES {
        let of_n = sessions
            .iter()
            .filter(|s| s.ends_with(&format!("--node {n}")))
            .count();
        assert_eq!(of_n, 2, "{n}: one fetch, one upload: {sessions:?}");
    }
    let (code, _, err) = fleet.fleet(&["--candidate"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no candidate is published in"), "{err}");

    // The candidate: app also installs /etc/motd and refuses a root with
    // /etc/nocheck.
    fleet
        .f
        .module_file("app", "files/etc/motd", "hello\n", 0o644)
        .module_file(
            "app",
            "scripts/10-check",
            "#!/bin/sh\nif [ -e /etc/nocheck ]; then echo 'refusing: /etc/nocheck' >&2; exit 3; fi\n",
            0o755,
        );
    let (code, _, err) = fleet.publish(&["--candidate"]);
    assert_eq!(code, 0, "{err}");
    let candidate = fleet.id("candidate");
    assert_ne!(candidate, current);
    assert_eq!(fleet.id("current"), current, "current untouched");
    let (code, out, _) = fleet.fleet(&["--candidate"]);
    assert_eq!(code, 2, "nobody reported yet: {out}");
    assert!(
        out.contains("not reported yet: 3 node(s): apply, broken, same"),
        "{out}"
    );

    let before: Vec<Vec<String>> = NODES
        .iter()
        .map(|n| snapshot_no_mtimes(&fleet.root(n).path))
        .collect();
    let err = fleet.dance("apply");
    assert!(
        err.contains(&format!(
            "info: previewed candidate {candidate}: 1 change, uploaded"
        )),
        "{err}"
    );
    assert!(
        !err.contains("/etc/motd"),
        "the preview's own output is not shown: {err}"
    );
    let err = fleet.dance("same");
    assert!(
        err.contains(&format!(
            "info: previewed candidate {candidate}: 0 changes, uploaded"
        )),
        "{err}"
    );
    let (code, out, _) = fleet.fleet(&["--candidate"]);
    assert_eq!(code, 2, "broken has not reported: {out}");
    assert!(out.contains("not reported yet: 1 node(s): broken"), "{out}");

    let err = fleet.dance("broken");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with(&format!(
            "warning: previewed candidate {candidate}: it fails: app: scripts/10-check exited 3"
        )) && warnings[0].ends_with("; uploaded"),
        "{err}"
    );

    // No root changed; each node's own report, status and reports are
    // its own run's (of current, converged).
    for (n, before) in NODES.iter().zip(&before) {
        assert_eq!(
            &snapshot_no_mtimes(&fleet.root(n).path),
            before,
            "{n}'s root changed"
        );
        let own = own_report(&fleet, n);
        assert_eq!(own["snapshot"], current.as_str(), "{n}");
        assert_eq!(own["status"], "ok", "{n}");
        assert!(own.get("candidate").is_none(), "{n}: {own}");
        let status = fs::read_to_string(fleet.home(n).join("state/status")).unwrap();
        assert!(status.contains("(0 change(s))"), "{n}: {status}");
        let stored = |name: &str| -> serde_json::Value {
            serde_json::from_slice(
                &fs::read(fleet.served.join("reports").join(n).join(name)).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(stored("last.json")["snapshot"], current.as_str());
        let preview = stored("candidate.json");
        assert_eq!(preview["candidate"], candidate.as_str());
        assert_eq!(preview["snapshot"], candidate.as_str());
        assert_eq!(preview["noop"], true);
    }
    assert_eq!(
        fleet.root("apply").read("etc/motd"),
        None,
        "the preview merged nothing"
    );

    // The three groups, exactly.
    let (code, out, _) = fleet.fleet(&["--candidate"]);
    assert_eq!(code, 1, "broken fails: {out}");
    let heads: Vec<&str> = out.lines().filter(|l| l.starts_with("group ")).collect();
    assert_eq!(
        heads,
        [
            "group 1: fails on 1 node(s): broken",
            "group 2: 1 change(s) on 1 node(s): apply",
            "group 3: no change on 1 node(s): same",
        ],
        "{out}"
    );
    assert!(
        out.starts_with(&format!(
            "candidate {candidate}: 3 node(s), 3 reported, 1 failing\n"
        )),
        "{out}"
    );
    // Why it fails: the failed step's last line on stderr.
    assert!(
        out.contains("\n  app: scripts/10-check exited 3 (stderr: refusing: /etc/nocheck)\n"),
        "{out}"
    );
    assert!(out.contains("info: File: /etc/motd : Created"), "{out}");
    assert!(!out.contains("not reported"), "{out}");

    let (code, out, _) = fleet.fleet(&["--candidate", "--json"]);
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["candidate"], candidate.as_str());
    assert_eq!(doc["exit_code"], 1);
    assert_eq!(doc["failed"], 1);
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{out}");
    assert_eq!(groups[0]["nodes"], serde_json::json!(["broken"]));
    assert_eq!(groups[0]["outcome"]["kind"], "fails");
    assert_eq!(groups[0]["outcome"]["module"], "app");
    assert_eq!(
        groups[0]["outcome"]["error"],
        "scripts/10-check exited 3 (stderr: refusing: /etc/nocheck)"
    );
    assert_eq!(groups[1]["nodes"], serde_json::json!(["apply"]));
    assert_eq!(groups[1]["outcome"]["changes"], 1);
    assert_eq!(
        groups[1]["outcome"]["modules"][0]["changes"][0]["path"],
        "/etc/motd"
    );
    assert_eq!(groups[2]["nodes"], serde_json::json!(["same"]));
    assert_eq!(groups[2]["outcome"]["changes"], 0);

    // Promote warns of the previews of the nodes it would move, and
    // still does what it is told (here --noop: nothing).
    let links = |fleet: &Fleet| fs::read_dir(&fleet.served).unwrap().count();
    let before = links(&fleet);
    let promote = |args: &[&str]| {
        run(fleet
            .f
            .disco_without_server()
            .args(["promote", "--noop", "--root"])
            .arg(&fleet.served)
            .args(args))
    };
    let (code, _, err) = promote(&["--nodes", "broken", "same"]);
    assert_eq!(code, 0, "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        [format!(
            "warning: the preview of the candidate {candidate} fails on 1 node(s) promoted: broken (app) (`disco report --fleet --candidate` says why)"
        )],
        "{err}"
    );
    let (code, _, err) = promote(&["--nodes", "same", "apply"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("warning:"),
        "both previewed it cleanly: {err}"
    );
    assert_eq!(links(&fleet), before, "--noop changed nothing");
    assert!(!fleet.served.join("pinned/broken").exists());

    // The fleet view shows each node on current.
    let (_, out, _) = fleet.fleet(&[]);
    for n in NODES {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap();
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(current.as_str()),
            "{out}"
        );
    }
}

/// A preview of the same root twice groups like one: the cache and store
/// of the preview are its own (`STATE/preview`), never the node's.
#[test]
fn the_preview_fetches_into_its_own_cache_and_store() {
    let fleet = Fleet::new();
    assert_eq!(fleet.publish(&[]).0, 0);
    fleet
        .f
        .module_file("app", "files/etc/motd", "hello\n", 0o644);
    assert_eq!(fleet.publish(&["--candidate"]).0, 0);
    fleet.dance("apply");
    let state = fleet.home("apply").join("state");
    let cached = |cache: &Path| fs::read_link(cache.join("modules/app")).unwrap();
    assert_ne!(
        cached(&state.join("cache")),
        cached(&state.join("preview/cache")),
        "the node's cache holds current's app, the preview's the candidate's"
    );
    assert!(state.join("preview/store").is_dir());
    // The node's own history holds its own run only.
    let (_, out, _) = fleet.disco("apply", &["report", "--history"]);
    assert_eq!(out.lines().count(), 1, "{out}");
}

/// `disco promote --group canary` moves only the canary (its next dance
/// runs the candidate, the others current), `disco promote` moves all;
/// `disco report --fleet` shows which snapshot each node ran, and once
/// the candidate is current there is nothing left to preview.
#[test]
fn promote_by_group_then_all_moves_the_nodes_and_the_fleet_view_shows_it() {
    let fleet = Fleet::new();
    assert_eq!(fleet.publish(&[]).0, 0);
    let current = fleet.id("current");
    fleet
        .f
        .module_file("app", "files/etc/motd", "hello\n", 0o644);
    assert_eq!(fleet.publish(&["--candidate"]).0, 0);
    let candidate = fleet.id("candidate");
    let runs = |fleet: &Fleet| -> Vec<(String, String)> {
        let (_, out, _) = fleet.fleet(&[]);
        out.lines()
            .skip(1)
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w[0].to_string(), w[1].to_string())
            })
            .collect()
    };
    let (code, out, err) = run(fleet
        .f
        .disco_without_server()
        .args(["promote", "--root"])
        .arg(&fleet.served)
        .args(["--group", "canary"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.starts_with(&format!(
            "warning: 1 node(s) promoted have not reported a preview of the candidate {candidate}: apply\n"
        )),
        "nobody previewed it yet: {err}"
    );
    for n in NODES {
        fleet.dance(n);
    }
    assert_eq!(
        runs(&fleet),
        [
            ("apply".to_string(), candidate.clone()),
            ("broken".to_string(), current.clone()),
            ("same".to_string(), current.clone()),
        ]
    );
    assert_eq!(
        fleet.root("apply").read("etc/motd").as_deref(),
        Some("hello\n")
    );
    assert_eq!(fleet.root("same").read("etc/motd"), None);
    // The table marks the canary, and its columns stay in line.
    let (_, table, _) = fleet.fleet(&[]);
    let line = |n: &str| {
        table
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap()
            .to_string()
    };
    assert!(
        line("apply").contains(&format!("{candidate} (pinned)")),
        "{table}"
    );
    assert!(!line("same").contains("pinned"), "{table}");

    // The canary no longer previews (it runs the candidate): its run of
    // it (its first: app.conf and motd) stands for its preview; the
    // others previewed it.
    let (code, out, _) = fleet.fleet(&["--candidate"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("group 1: 1 change(s) on 2 node(s): broken, same\n"),
        "{out}"
    );
    assert!(
        out.contains("group 2: 2 change(s) on 1 node(s): apply\n"),
        "{out}"
    );

    let (code, out, err) = run(fleet
        .f
        .disco_without_server()
        .args(["promote", "--root"])
        .arg(&fleet.served));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning:"), "every node previewed it: {err}");
    for n in NODES {
        let err = fleet.dance(n);
        assert!(!err.contains("previewed"), "no candidate left: {err}");
    }
    assert_eq!(
        runs(&fleet),
        ["apply", "broken", "same"].map(|n| (n.to_string(), candidate.clone()))
    );
    assert_eq!(
        fleet.root("same").read("etc/motd").as_deref(),
        Some("hello\n")
    );
}

/// `dance --if-changed` that finds its snapshot unchanged still previews
/// a candidate it has not previewed yet, once.
#[test]
fn a_skipped_dance_previews_a_new_candidate_once() {
    let fleet = Fleet::new();
    assert_eq!(fleet.publish(&[]).0, 0);
    fleet.dance("apply");
    fleet
        .f
        .module_file("app", "files/etc/motd", "hello\n", 0o644);
    assert_eq!(fleet.publish(&["--candidate"]).0, 0);
    let candidate = fleet.id("candidate");
    let (code, _, err) = fleet.disco("apply", &["dance", "--if-changed"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("skipped: the server's snapshot"), "{err}");
    assert!(
        err.contains(&format!(
            "info: previewed candidate {candidate}: 1 change, uploaded"
        )),
        "{err}"
    );
    let (code, _, err) = fleet.disco("apply", &["dance", "--if-changed"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("skipped: the server's snapshot"), "{err}");
    assert!(!err.contains("previewed"), "previewed already: {err}");
}

/// A preview its deadline ends is not the candidate's failure: nothing
/// is uploaded, one warning says so, and the dance keeps its own exit
/// code and status.
#[test]
fn a_preview_past_its_deadline_is_not_uploaded() {
    let fleet = Fleet::new();
    let config = fleet.home("apply").join("disco.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("dance_timeout = 3\n");
    fs::write(&config, text).unwrap();
    assert_eq!(fleet.publish(&[]).0, 0);
    fleet.f.module_file(
        "app",
        "scripts/10-slow",
        "#!/bin/sh\nsleep 60 # candidate_preview deadline\n",
        0o755,
    );
    assert_eq!(fleet.publish(&["--candidate"]).0, 0);
    let candidate = fleet.id("candidate");
    let err = fleet.dance("apply");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with(&format!(
            "warning: the preview of candidate {candidate} was stopped, not uploaded: the dance ran past dance_timeout (3 s)"
        )),
        "{err}"
    );
    assert!(!fleet.served.join("reports/apply/candidate.json").exists());
    let status = fs::read_to_string(fleet.home("apply").join("state/status")).unwrap();
    assert!(status.starts_with("done at "), "{status}");
}
